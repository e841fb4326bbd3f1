"""Extractive-QA span mathematics: question/context pairs to model windows, logits to answers.

This module is the single place where both happen, so that the PyTorch model (at export
time) and the ONNX files (at run time) are windowed and decoded identically.

Windowing follows Hugging Face's SQuAD preprocessing: the context is truncated
(``only_second``) into overlapping windows of ``max_length`` tokens that share
``doc_stride`` tokens, every window repeating the question. Decoding follows the
``transformers`` question-answering pipeline: each window's start and end logits become
probabilities by a softmax over its context tokens and ``[CLS]``; a span's score is
``p_start * p_end``; the best spans of all windows of a pair compete on that score. Like
the pipeline (``align_to_words=True``), a span that starts or ends inside a word is widened
to the whole word, so an answer never reads "##ing" or "Par".

Example::

    windows = encode_qa(tokenizer, ["Who wrote it?"], ["It was written by Ann."], 384, 128)
    start_logits, end_logits = run_model(windows.model_inputs())
    answers = decode_answers(start_logits, end_logits, windows, ["It was written by Ann."])
    answers[0][0].text  # "Ann"

Only numpy and ``tokenizers`` are used here: the runtime never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

from bertrt.errors import InputError

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

# [CLS] opens every BERT window; its logits carry the "no answer" score.
CLS_POSITION = 0


@dataclass
class QAWindows:
    """Model windows of a batch of question/context pairs, padded to the longest window.

    ``offsets`` are character offsets into the window's context, ``(0, 0)`` on question,
    special and padding tokens; ``word_offsets`` are the same for the whole word each token
    belongs to (the first character of its word, one past the last); ``context_mask`` is
    True on context tokens only; ``example_index[w]`` is the pair that window ``w`` was cut from.
    """

    input_ids: IntArray
    attention_mask: IntArray
    token_type_ids: IntArray
    offsets: IntArray
    word_offsets: IntArray
    context_mask: BoolArray
    example_index: IntArray

    @property
    def n_windows(self) -> int:
        """Number of windows (rows)."""
        return int(self.input_ids.shape[0])

    def model_inputs(self) -> dict[str, IntArray]:
        """The three BERT inputs by name; feed only those the model declares."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }


@dataclass(frozen=True)
class Answer:
    """One answer span: ``text == context[start:end]`` (character offsets), with its score.

    An empty ``text`` at ``start == end == 0`` is the "no answer" prediction.
    """

    text: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"text", "start", "end", "score"}``."""
        return {"text": self.text, "start": self.start, "end": self.end, "score": self.score}


def encode_qa(
    tokenizer: Tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    max_length: int,
    doc_stride: int,
    first_index: int = 0,
) -> QAWindows:
    """Cut question/context pairs into model windows, as Hugging Face's SQuAD preprocessing does.

    Long contexts overflow into further windows that overlap by ``doc_stride`` tokens.
    Questions are left-stripped (leading spaces only waste window room). Error messages
    number pairs from ``first_index`` (for callers that encode a long call in chunks).

    The tokenizer's truncation and padding settings are overwritten, so pass an instance
    dedicated to QA and do not share it between threads without a lock.

    Example::

        windows = encode_qa(tok, ["Where?"], ["In Paris."], max_length=384, doc_stride=128)
        windows.input_ids.shape  # (1, n_tokens)
    """
    check_pairs(questions, contexts, max_length, doc_stride, first_index)
    stripped = [question.lstrip() for question in questions]
    n_special = tokenizer.num_special_tokens_to_add(is_pair=True)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    question_lengths = [len(e.ids) for e in tokenizer.encode_batch(stripped, add_special_tokens=False)]
    _check_room(tokenizer, stripped, contexts, question_lengths, n_special, max_length, doc_stride, first_index)
    tokenizer.enable_truncation(max_length, stride=doc_stride, strategy="only_second")
    encodings = tokenizer.encode_batch(list(zip(stripped, contexts)))
    rows: list[Encoding] = []
    example_index: list[int] = []
    for index, encoding in enumerate(encodings):
        for window in (encoding, *encoding.overflowing):
            rows.append(window)
            example_index.append(index)
    return _pad_windows(rows, example_index, _pad_id(tokenizer))


def decode_answers(
    start_logits: npt.ArrayLike,
    end_logits: npt.ArrayLike,
    windows: QAWindows,
    contexts: Sequence[str],
    top_k: int = 1,
    max_answer_length: int = 30,
    null_threshold: float | None = None,
    align_to_words: bool = True,
) -> list[list[Answer]]:
    """The ``top_k`` best answers of every pair, best first.

    Candidate spans lie inside the context, end at or after their start and span at most
    ``max_answer_length`` tokens. With ``align_to_words`` a span that starts or ends inside
    a word is widened to the whole word, as the ``transformers`` pipeline does. Spans that
    cover the same characters are one answer: in one window their probabilities add up,
    across the overlapping windows of a pair the best window's score is kept. With
    ``null_threshold`` set (SQuAD 2.0 style), a pair whose ``[CLS]`` logit sum (the minimum
    over its windows) beats the best span's logit sum by more than the threshold gets
    ``[Answer("", 0, 0, p_null)]``. A pair with no candidate span gets ``[]`` (or the
    no-answer when a threshold is set).

    Example::

        answers = decode_answers(start, end, windows, contexts, top_k=3)
        [a.text for a in answers[0]]
    """
    start = np.asarray(start_logits, dtype=np.float64)
    end = np.asarray(end_logits, dtype=np.float64)
    _check_decode_args(start, end, windows, contexts, top_k, max_answer_length)
    # A window's softmax runs over its context tokens and [CLS], as the transformers pipeline does.
    scored = windows.context_mask.copy()
    scored[:, CLS_POSITION] = True
    log_norm = _logsumexp(start, scored) + _logsumexp(end, scored)
    span_log_prob, valid = _span_band(start, end, windows.context_mask, max_answer_length)
    span_log_prob -= log_norm[:, None, None]
    char_offsets = windows.word_offsets if align_to_words else windows.offsets
    # Widening merges spans, so each window offers more than top_k (the pipeline's 2k + 10).
    per_window = 2 * top_k + 10 if align_to_words else top_k
    results: list[list[Answer]] = []
    for index, rows in enumerate(_rows_by_pair(windows.example_index, len(contexts))):
        if rows.size == 0:  # a pair the caller gave no window for
            results.append([])
            continue
        answers, best_logit = _best_spans(
            span_log_prob[rows], valid[rows], log_norm[rows], char_offsets[rows], contexts[index], top_k, per_window
        )
        if null_threshold is not None:
            null_logit, null = _null_answer(start[rows], end[rows], log_norm[rows])
            if not answers or null_logit - best_logit > null_threshold:
                answers = [null]
        results.append(answers)
    return results


def check_pairs(
    questions: Sequence[str], contexts: Sequence[str], max_length: int, doc_stride: int, first_index: int = 0
) -> None:
    """InputError unless there is one context per question, the stride fits the window and
    no question or context is empty or blank (pairs numbered from ``first_index``)."""
    if len(questions) != len(contexts):
        raise InputError(f"Got {len(questions)} questions but {len(contexts)} contexts; pass one context per question.")
    if doc_stride < 0 or max_length <= doc_stride:
        raise InputError(f"doc_stride ({doc_stride}) must be at least 0 and below max_length ({max_length}); lower it.")
    for index, (question, context) in enumerate(zip(questions, contexts), start=first_index):
        if not question.strip():
            raise InputError(f"Question {index} is empty; pass a non-empty question.")
        if not context.strip():
            raise InputError(f"Context {index} is empty; pass the text to search for the answer.")


def _check_room(
    tokenizer: Tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    question_lengths: Sequence[int],
    n_special: int,
    max_length: int,
    doc_stride: int,
    first_index: int,
) -> None:
    """Refuse questions that leave too little window room (tokenizers would panic on them)."""
    for position, question_length in enumerate(question_lengths):
        index = first_index + position
        room = max_length - question_length - n_special
        if room < 1:
            raise InputError(
                f"Question {index} has {question_length} tokens, leaving no room for the context "
                f"in a window of max_length {max_length}; shorten the question or raise max_length."
            )
        if room > doc_stride:
            continue
        # Too little room for the overlap only matters when the context must be split.
        context_length = len(tokenizer.encode(contexts[position], add_special_tokens=False).ids)
        if question_length + context_length + n_special > max_length:
            raise InputError(
                f"Question {index} has {question_length} tokens, leaving {room} context tokens per "
                f"window, not more than doc_stride {doc_stride}; shorten the question, raise "
                "max_length or lower doc_stride."
            )


def _pad_id(tokenizer: Tokenizer) -> int:
    padding = tokenizer.padding
    if padding is not None:
        return int(padding["pad_id"])
    pad_id = tokenizer.token_to_id("[PAD]")
    return 0 if pad_id is None else pad_id


def _pad_windows(rows: Sequence[Encoding], example_index: Sequence[int], pad_id: int) -> QAWindows:
    n_rows = len(rows)
    seq = max((len(row.ids) for row in rows), default=0)
    input_ids = np.full((n_rows, seq), pad_id, dtype=np.int64)
    attention_mask = np.zeros((n_rows, seq), dtype=np.int64)
    token_type_ids = np.zeros((n_rows, seq), dtype=np.int64)
    offsets = np.zeros((n_rows, seq, 2), dtype=np.int64)
    word_ids = np.full((n_rows, seq), -1, dtype=np.int64)
    context_mask = np.zeros((n_rows, seq), dtype=np.bool_)
    for r, row in enumerate(rows):
        n = len(row.ids)
        input_ids[r, :n] = row.ids
        attention_mask[r, :n] = row.attention_mask
        token_type_ids[r, :n] = row.type_ids
        in_context = np.array([sid == 1 for sid in row.sequence_ids], dtype=np.bool_)
        context_mask[r, :n] = in_context
        offsets[r, :n] = np.where(in_context[:, None], np.asarray(row.offsets, dtype=np.int64), 0)
        word_ids[r, :n] = [-1 if word is None else word for word in row.word_ids]
    return QAWindows(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        offsets=offsets,
        word_offsets=_word_offsets(offsets, word_ids, context_mask),
        context_mask=context_mask,
        example_index=np.asarray(example_index, dtype=np.int64),
    )


def _word_offsets(offsets: IntArray, word_ids: IntArray, context_mask: BoolArray) -> IntArray:
    """Character span of each context token's whole word, ``(0, 0)`` elsewhere.

    A word is a run of context tokens with one word id, so its span runs from the run's first
    token's start to its last token's end. A word cut by a window edge keeps the part inside
    the window, as ``Encoding.word_to_chars`` does.
    """
    n_rows, seq = word_ids.shape
    if seq == 0:
        return offsets.copy()
    continues = np.zeros((n_rows, seq), dtype=np.bool_)  # token belongs to the previous token's word
    continues[:, 1:] = (word_ids[:, 1:] == word_ids[:, :-1]) & context_mask[:, 1:] & context_mask[:, :-1]
    position = np.broadcast_to(np.arange(seq), (n_rows, seq))
    first = np.maximum.accumulate(np.where(continues, 0, position), axis=1)
    continued = np.zeros_like(continues)
    continued[:, :-1] = continues[:, 1:]  # the next token belongs to this token's word
    last = np.minimum.accumulate(np.where(continued, seq - 1, position)[:, ::-1], axis=1)[:, ::-1]
    word_offsets = np.stack(
        [np.take_along_axis(offsets[..., 0], first, axis=1), np.take_along_axis(offsets[..., 1], last, axis=1)],
        axis=-1,
    )
    return np.where(context_mask[..., None], word_offsets, 0)


def _check_decode_args(
    start: FloatArray,
    end: FloatArray,
    windows: QAWindows,
    contexts: Sequence[str],
    top_k: int,
    max_answer_length: int,
) -> None:
    expected = windows.input_ids.shape
    if start.shape != expected or end.shape != expected:
        raise InputError(
            f"QA logits have shapes {start.shape} and {end.shape} but the windows are {expected}; "
            "pass the model outputs for exactly these windows."
        )
    if windows.n_windows and int(windows.example_index.max()) >= len(contexts):
        raise InputError("The windows refer to more contexts than were given; pass every context.")
    if top_k < 1:
        raise InputError(f"top_k must be 1 or more, got {top_k}.")
    if max_answer_length < 1:
        raise InputError(f"max_answer_length must be 1 or more, got {max_answer_length}.")


def _span_band(
    start: FloatArray, end: FloatArray, context_mask: BoolArray, max_answer_length: int
) -> tuple[FloatArray, BoolArray]:
    """Start+end logit sums of every span as a band ``[window, start token, length - 1]``, and
    whether each lies inside the context.

    Only the ``max_answer_length`` diagonals of the upper triangle are materialized, so the
    cost is ``seq * max_answer_length`` per window instead of ``seq ** 2``.
    """
    seq = start.shape[1]
    width = min(max_answer_length, seq)
    end_index = np.arange(seq)[:, None] + np.arange(width)[None, :]
    inside = end_index < seq
    end_index = np.minimum(end_index, seq - 1)
    span_logits = start[:, :, None] + end[:, end_index]
    valid = context_mask[:, :, None] & context_mask[:, end_index] & inside[None]
    return span_logits, valid


def _rows_by_pair(example_index: IntArray, n_pairs: int) -> list[IntArray]:
    """The window rows of each pair, in one sort instead of a scan per pair."""
    order = np.argsort(example_index, kind="stable")
    bounds = np.searchsorted(example_index[order], np.arange(n_pairs + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(n_pairs)]


def _logsumexp(logits: FloatArray, mask: BoolArray) -> FloatArray:
    masked = np.where(mask, logits, -np.inf)
    peak: FloatArray = masked.max(axis=1)
    total: FloatArray = np.exp(masked - peak[:, None]).sum(axis=1)
    return peak + np.log(total)


def _best_spans(
    log_prob: FloatArray,
    valid: BoolArray,
    log_norm: FloatArray,
    offsets: IntArray,
    context: str,
    top_k: int,
    per_window: int,
) -> tuple[list[Answer], float]:
    """Top-k distinct character spans of one pair's windows, and the best token span's logit sum.

    As in the ``transformers`` pipeline, each window offers its ``per_window`` best token
    spans, and those of one window that cover the same characters (word pieces of one word,
    once aligned to words) are one answer whose probabilities add up. An answer offered by
    several overlapping windows keeps its best window's score (the pipeline adds those up
    too, which can push a score past 1). When the offers merge into fewer than ``top_k``
    answers, each window offers more, so a pair gets ``top_k`` answers whenever its context
    holds that many spans.
    """
    n_windows = log_prob.shape[0]
    flat = np.where(valid, log_prob, -np.inf).reshape(n_windows, -1)
    take = min(per_window, flat.shape[1])
    while True:
        answers, best_logit = _merged_offers(flat, take, log_prob.shape[1:], log_norm, offsets, context, top_k)
        if len(answers) == top_k or take == flat.shape[1]:
            return answers, best_logit
        take = min(flat.shape[1], take * 2)


def _merged_offers(
    flat: FloatArray,
    take: int,
    band_shape: tuple[int, ...],
    log_norm: FloatArray,
    offsets: IntArray,
    context: str,
    top_k: int,
) -> tuple[list[Answer], float]:
    """The answers made of each window's ``take`` best token spans (see :func:`_best_spans`)."""
    if take == 0:
        return [], -np.inf
    n_windows = flat.shape[0]
    cut = np.argpartition(-flat, take - 1, axis=1)[:, :take].ravel()
    window = np.repeat(np.arange(n_windows), take)
    log_p = flat[window, cut]
    offered = np.isfinite(log_p)
    if not offered.any():
        return [], -np.inf
    window, cut, log_p = window[offered], cut[offered], log_p[offered]
    start_token, length = np.unravel_index(cut, band_shape)
    best = int(np.argmax(log_p))
    # Undo the window's normalization: the no-answer rule compares raw start+end logit sums.
    best_logit = float(log_p[best] + log_norm[window[best]])
    char_start = offsets[window, start_token, 0]
    char_end = offsets[window, start_token + length, 1]
    # One probability per (window, character span).
    order = np.lexsort((char_end, char_start, window))
    char_start, char_end = char_start[order], char_end[order]
    heads = np.flatnonzero(_starts_of_runs(window[order], char_start, char_end))
    prob = np.add.reduceat(np.exp(log_p[order]), heads)
    char_start, char_end = char_start[heads], char_end[heads]
    # One score per character span: its best window's.
    order = np.lexsort((-prob, char_end, char_start))
    keep = order[_starts_of_runs(char_start[order], char_end[order])]
    top = keep[np.argsort(-prob[keep], kind="stable")[:top_k]]
    answers = [
        Answer(context[int(char_start[i]) : int(char_end[i])], int(char_start[i]), int(char_end[i]), float(prob[i]))
        for i in top
    ]
    return answers, best_logit


def _starts_of_runs(*keys: IntArray) -> BoolArray:
    """True where a row of sorted ``keys`` differs from the row before it (and on row 0)."""
    new = np.zeros(keys[0].size, dtype=np.bool_)
    new[:1] = True
    for key in keys:
        new[1:] |= key[1:] != key[:-1]
    return new


def _null_answer(start: FloatArray, end: FloatArray, log_norm: FloatArray) -> tuple[float, Answer]:
    """The pair's no-answer logit sum (minimum over windows) and its answer, scored p_start * p_end."""
    null_logits = start[:, CLS_POSITION] + end[:, CLS_POSITION]
    window = int(np.argmin(null_logits))
    score = float(np.exp(null_logits[window] - log_norm[window]))
    return float(null_logits[window]), Answer("", 0, 0, score)
