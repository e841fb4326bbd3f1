"""Extractive question answering over contexts of any length.

Windowing lives in :mod:`bertrt.qa_windows` and span decoding in :mod:`bertrt.qa_decode`
(both shared with the export stage); this runner checks a call's inputs, gathers its
decoding settings into one :class:`~bertrt.qa_decode.DecodeOptions`, feeds the windows
through the session in length-grouped batches and hands the logits to the decoder.

Example::

    qa = QuestionAnswerer("models/minilm/qa")
    result = qa.answer("Where is the Eiffel Tower?", "The Eiffel Tower is in Paris.")
    result.best.text   # 'Paris' (an exact slice of the context)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from bertrt.batching import plan_batches
from bertrt.errors import BundleError, InputError
from bertrt.lanes import lane_batch_size
from bertrt.limits import check_texts, check_top_k
from bertrt.qa_decode import DecodeOptions, decode_answers
from bertrt.qa_windows import QAWindows, check_pairs, encode_qa
from bertrt.results import QAResult
from bertrt.runner import TaskRunner
from bertrt.session import OrtSession
from bertrt.types import Task

START, END = "start_logits", "end_logits"


def pair_chunks(contexts: Sequence[str], max_chars: int, max_pairs: int) -> list[slice]:
    """Consecutive runs of pairs holding at most ``max_chars`` context characters and
    ``max_pairs`` pairs (one pair alone may hold up to ``max_chars``).

    A call is windowed, run and decoded chunk by chunk, so its working memory (windows,
    logits and the span band, ~20 bytes per token per answer length) is that of one
    chunk, whatever the number of pairs: results are the only thing that grows.

    >>> pair_chunks(["aa", "bb", "cccc", "d"], max_chars=4, max_pairs=8)
    [slice(0, 2, None), slice(2, 3, None), slice(3, 4, None)]
    """
    chunks: list[slice] = []
    first, chars = 0, 0
    for index, context in enumerate(contexts):
        if index > first and (chars + len(context) > max_chars or index - first >= max_pairs):
            chunks.append(slice(first, index))
            first, chars = index, 0
        chars += len(context)
    if first < len(contexts):
        chunks.append(slice(first, len(contexts)))
    return chunks


class QuestionAnswerer(TaskRunner):
    """Answers (question, context) pairs with spans copied from the context.

    Contexts longer than the model window are cut into windows that overlap by the
    manifest's ``doc_stride`` tokens; the best span across all windows wins.
    """

    task = Task.QA

    def _after_load(self) -> None:
        if self.manifest.doc_stride is None:
            raise BundleError(f"{self.model.directory}'s manifest has no doc_stride; re-export the bundle.")
        self.doc_stride: int = self.manifest.doc_stride
        # encode_qa reconfigures the tokenizer on every call, so QA gets its own instance,
        # serialized by a lock (tokenizing is cheap next to the model run).
        self._qa_tokenizer = self.tokenizer.fresh()
        self._qa_lock = threading.Lock()

    def __call__(
        self,
        questions: str | Sequence[str],
        contexts: str | Sequence[str],
        *,
        top_k: int = 1,
        max_answer_length: int = 30,
        null_threshold: float | None = None,
        align_to_words: bool = True,
    ) -> list[QAResult]:
        """Answer each ``questions[i]`` from ``contexts[i]`` (a str is one pair); one
        :class:`QAResult` per pair, in order.

        ``top_k`` distinct answers per pair, best first (fewer when the context holds
        fewer spans; at most ``options.max_top_k``); spans of at most
        ``max_answer_length`` tokens. With ``null_threshold`` set, a pair whose no-answer
        score beats its best span by more than the threshold gets one empty answer. With
        ``align_to_words`` (the default, as in the ``transformers`` pipeline) a span that
        starts or ends inside a word is widened to the whole word. A context with no
        readable token (control characters only) gets no answers.

        Empty or blank questions and contexts, a question too long for the model window,
        and contexts over ``options.max_context_chars`` raise InputError.
        """
        decoding = DecodeOptions(top_k, max_answer_length, null_threshold, align_to_words)
        return self._answer_pairs(questions, contexts, decoding)

    def answer(
        self,
        question: str,
        context: str,
        *,
        top_k: int = 1,
        max_answer_length: int = 30,
        null_threshold: float | None = None,
        align_to_words: bool = True,
    ) -> QAResult:
        """Answer one question from one context (see :meth:`__call__`)."""
        decoding = DecodeOptions(top_k, max_answer_length, null_threshold, align_to_words)
        [result] = self._answer_pairs([question], [context], decoding)
        return result

    def _answer_pairs(
        self, questions: str | Sequence[str], contexts: str | Sequence[str], decoding: DecodeOptions
    ) -> list[QAResult]:
        """Check a call's inputs, then window, run and decode it chunk by chunk."""
        questions = check_texts(questions, self.options, "question")
        contexts = check_texts(contexts, self.options, "context", self.options.max_context_chars, "max_context_chars")
        check_top_k(decoding.top_k, self.options)
        # Every pair is checked before any chunk runs: a bad pair late in a call fails it fast.
        check_pairs(questions, contexts, self.manifest.max_length, self.doc_stride)
        self._check_question_lengths(questions)
        results: list[QAResult] = []
        for chunk in pair_chunks(contexts, self.options.max_context_chars, 4 * self.options.batch_size):
            results += self._answer_chunk(chunk, questions[chunk], contexts[chunk], decoding)
        return results

    def _answer_chunk(
        self, chunk: slice, questions: list[str], contexts: list[str], decoding: DecodeOptions
    ) -> list[QAResult]:
        """Window, run and decode the pairs of one ``chunk`` of the call."""
        with self._qa_lock:
            windows = encode_qa(
                self._qa_tokenizer,
                questions,
                contexts,
                self.manifest.max_length,
                self.doc_stride,
                first_index=chunk.start,
                pad_id=self.tokenizer.pad_id,
            )
        start, end = self._logits(windows, chunk.start)
        answers = decode_answers(start, end, windows, contexts, decoding)
        counts = np.bincount(windows.example_index, minlength=len(contexts))
        return [QAResult(tuple(a), int(n)) for a, n in zip(answers, counts, strict=True)]

    def _check_question_lengths(self, questions: list[str]) -> None:
        """Refuse a question that fills the window before its full length is tokenized: the
        truncating tokenizer reads only the head of a long text."""
        for index, encoding in enumerate(self.tokenizer.encode(questions)):
            if encoding.truncated:
                raise InputError(
                    f"Question #{index} is longer than the model window ({self.manifest.max_length} "
                    "tokens), leaving no room for the context; shorten the question."
                )

    def _logits(self, windows: QAWindows, first_pair: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits ``(windows, seq)`` for every window, run in length groups;
        ``first_pair`` is the call's index of the windows' first pair (errors name the pair).

        Each batch is cut to its longest window; logits past a window's length stay 0,
        which decoding ignores (it only reads context tokens and [CLS]).
        """
        lengths = windows.attention_mask.sum(axis=1)
        inputs = windows.feeds()
        start = np.zeros(windows.input_ids.shape, dtype=np.float32)
        end = np.zeros(windows.input_ids.shape, dtype=np.float32)

        def run_batch(rows: list[int], session: OrtSession) -> None:
            width = int(lengths[rows].max())
            pairs = (first_pair + windows.example_index[rows]).tolist()
            outputs = self._run_session({k: v[rows, :width] for k, v in inputs.items()}, pairs, session)
            # Batches hold disjoint rows, so lanes never write the same cells.
            start[rows, :width] = outputs[START]
            end[rows, :width] = outputs[END]

        lanes = self._lane_plan(len(lengths))
        batch_size = lane_batch_size(self.options.batch_size, lanes)
        self._map_batches(run_batch, plan_batches(lengths.tolist(), batch_size, self.options.group_by_length), lanes)
        return start, end
