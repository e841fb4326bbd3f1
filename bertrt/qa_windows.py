"""Extractive-QA windowing: question/context pairs to padded model windows.

Windowing follows Hugging Face's SQuAD preprocessing: the context is truncated
(``only_second``) into overlapping windows of ``max_length`` tokens that share
``doc_stride`` tokens, every window repeating the question. Each window keeps the
character offsets of its context tokens (and of the whole words they belong to), which
:mod:`bertrt.qa_decode` turns back into exact slices of the context.

The export stage windows its PyTorch model through this same module (training features,
validation, SQuAD scores), so PyTorch and the ONNX files always see identical windows.

Example::

    windows = encode_qa(tokenizer, ["Who wrote it?"], ["It was written by Ann."], 384, 128)
    windows.input_ids.shape     # (1, n_tokens)
    outputs = session.run(windows.feeds())

Only numpy and ``tokenizers`` are used here: the runtime never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

from bertrt.errors import InputError
from bertrt.feeds import TokenBatch, pad_rows, pad_token_id

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# [CLS] opens every BERT window; its logits carry the "no answer" score.
CLS_POSITION = 0


@dataclass(frozen=True)
class QAWindows(TokenBatch):
    """Model windows of a batch of question/context pairs, padded to the longest window.

    The inherited ``input_ids``, ``attention_mask`` and ``token_type_ids`` (and
    :meth:`~bertrt.feeds.TokenBatch.feeds`) are the model inputs. ``offsets`` are character
    offsets into the window's context, ``(0, 0)`` on question, special and padding tokens;
    ``word_offsets`` are the same for the whole word each token belongs to (the first
    character of its word, one past the last); ``context_mask`` is True on context tokens
    only; ``example_index[w]`` is the pair that window ``w`` was cut from.
    """

    offsets: IntArray
    word_offsets: IntArray
    context_mask: BoolArray
    example_index: IntArray

    @property
    def n_windows(self) -> int:
        """Number of windows (rows)."""
        return int(self.input_ids.shape[0])


def encode_qa(
    tokenizer: Tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    max_length: int,
    doc_stride: int,
    first_index: int = 0,
    pad_id: int | None = None,
) -> QAWindows:
    """Cut question/context pairs into model windows, as Hugging Face's SQuAD preprocessing does.

    Long contexts overflow into further windows that overlap by ``doc_stride`` tokens.
    Questions are left-stripped (leading spaces only waste window room). Error messages
    number pairs from ``first_index`` (for callers that encode a long call in chunks).
    Windows are padded with ``pad_id``, by default :func:`bertrt.feeds.pad_token_id` of the
    tokenizer as it is passed in.

    The tokenizer's truncation and padding settings are overwritten, so pass an instance
    dedicated to QA and do not share it between threads without a lock.

    Example::

        windows = encode_qa(tok, ["Where?"], ["In Paris."], max_length=384, doc_stride=128)
        windows.input_ids.shape  # (1, n_tokens)
    """
    check_pairs(questions, contexts, max_length, doc_stride, first_index)
    if pad_id is None:
        pad_id = pad_token_id(tokenizer)  # before no_padding() clears the tokenizer's own setting
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
    return _pad_windows(rows, example_index, pad_id)


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


def _pad_windows(rows: Sequence[Encoding], example_index: Sequence[int], pad_id: int) -> QAWindows:
    """The windows' model inputs (:func:`bertrt.feeds.pad_rows`) with their offsets and masks."""
    tokens = pad_rows([row.ids for row in rows], pad_id, [row.type_ids for row in rows])
    n_rows, seq = tokens.input_ids.shape
    offsets = np.zeros((n_rows, seq, 2), dtype=np.int64)
    word_ids = np.full((n_rows, seq), -1, dtype=np.int64)
    context_mask = np.zeros((n_rows, seq), dtype=np.bool_)
    for r, row in enumerate(rows):
        n = len(row.ids)
        in_context = np.array([sid == 1 for sid in row.sequence_ids], dtype=np.bool_)
        context_mask[r, :n] = in_context
        offsets[r, :n] = np.where(in_context[:, None], np.asarray(row.offsets, dtype=np.int64), 0)
        word_ids[r, :n] = [-1 if word is None else word for word in row.word_ids]
    return QAWindows(
        input_ids=tokens.input_ids,
        attention_mask=tokens.attention_mask,
        token_type_ids=tokens.token_type_ids,
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
