"""Extractive-QA decoding: start and end logits of model windows to answer spans.

Decoding follows the ``transformers`` question-answering pipeline: each window's start and
end logits become probabilities by a softmax over its context tokens and ``[CLS]``; a span's
score is ``p_start * p_end``; the best spans of all windows of a pair compete on that score.
Like the pipeline (``align_to_words=True``), a span that starts or ends inside a word is
widened to the whole word, so an answer never reads "##ing" or "Par".

The export stage decodes its PyTorch model through this same module, so PyTorch answers and
the ONNX files' answers are always decoded identically.

Example::

    windows = encode_qa(tokenizer, ["Who wrote it?"], ["It was written by Ann."], 384, 128)
    start_logits, end_logits = run_model(windows.feeds())
    answers = decode_answers(start_logits, end_logits, windows, ["It was written by Ann."])
    answers[0][0].text  # "Ann"

Only numpy is used here: the runtime never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bertrt.errors import InputError
from bertrt.limits import check_positive
from bertrt.qa_windows import CLS_POSITION, BoolArray, IntArray, QAWindows
from bertrt.results import Answer

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DecodeOptions:
    """How windows' logits become answers; checked once, when built (InputError).

    ``top_k`` distinct answers per pair, best first; spans of at most ``max_answer_length``
    tokens. With ``null_threshold`` set (SQuAD 2.0 style), a pair whose no-answer score
    beats its best span by more than the threshold gets one empty answer. With
    ``align_to_words`` (the ``transformers`` pipeline's default) a span that starts or ends
    inside a word is widened to the whole word.

    >>> DecodeOptions(top_k=3).max_answer_length
    30
    """

    top_k: int = 1
    max_answer_length: int = 30
    null_threshold: float | None = None
    align_to_words: bool = True

    def __post_init__(self) -> None:
        check_positive(self.top_k, "top_k")
        check_positive(self.max_answer_length, "max_answer_length")
        threshold = self.null_threshold
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold)
        ):
            raise InputError(f"null_threshold must be a number or None, got {threshold!r}.")
        if not isinstance(self.align_to_words, bool):
            raise InputError(f"align_to_words must be True or False, got {self.align_to_words!r}.")


def decode_answers(
    start_logits: npt.ArrayLike,
    end_logits: npt.ArrayLike,
    windows: QAWindows,
    contexts: Sequence[str],
    options: DecodeOptions = DecodeOptions(),
) -> list[list[Answer]]:
    """The ``options.top_k`` best answers of every pair, best first.

    Candidate spans lie inside the context, end at or after their start and span at most
    ``options.max_answer_length`` tokens. With ``options.align_to_words`` a span that starts
    or ends inside a word is widened to the whole word, as the ``transformers`` pipeline does.
    Spans that cover the same characters are one answer: in one window their probabilities
    add up, across the overlapping windows of a pair the best window's score is kept. With
    ``options.null_threshold`` set (SQuAD 2.0 style), a pair whose ``[CLS]`` logit sum (the
    minimum over its windows) beats the best span's logit sum by more than the threshold
    gets ``[Answer("", 0, 0, p_null)]``. A pair with no candidate span gets ``[]`` (or the
    no-answer when a threshold is set).

    Example::

        answers = decode_answers(start, end, windows, contexts, DecodeOptions(top_k=3))
        [a.text for a in answers[0]]
    """
    start = np.asarray(start_logits, dtype=np.float64)
    end = np.asarray(end_logits, dtype=np.float64)
    _check_decode_args(start, end, windows, contexts)
    top_k = options.top_k
    # A window's softmax runs over its context tokens and [CLS], as the transformers pipeline does.
    scored = windows.context_mask.copy()
    scored[:, CLS_POSITION] = True
    log_norm = _logsumexp(start, scored) + _logsumexp(end, scored)
    span_log_prob, valid = _span_band(start, end, windows.context_mask, options.max_answer_length)
    span_log_prob -= log_norm[:, None, None]
    char_offsets = windows.word_offsets if options.align_to_words else windows.offsets
    # Widening merges spans, so each window offers more than top_k (the pipeline's 2k + 10).
    per_window = 2 * top_k + 10 if options.align_to_words else top_k
    results: list[list[Answer]] = []
    for index, rows in enumerate(_rows_by_pair(windows.example_index, len(contexts))):
        if rows.size == 0:  # a pair the caller gave no window for
            results.append([])
            continue
        answers, best_logit = _best_spans(
            span_log_prob[rows], valid[rows], log_norm[rows], char_offsets[rows], contexts[index], top_k, per_window
        )
        if options.null_threshold is not None:
            null_logit, null = _null_answer(start[rows], end[rows], log_norm[rows])
            if not answers or null_logit - best_logit > options.null_threshold:
                answers = [null]
        results.append(answers)
    return results


def _check_decode_args(start: FloatArray, end: FloatArray, windows: QAWindows, contexts: Sequence[str]) -> None:
    expected = windows.input_ids.shape
    if start.shape != expected or end.shape != expected:
        raise InputError(
            f"QA logits have shapes {start.shape} and {end.shape} but the windows are {expected}; "
            "pass the model outputs for exactly these windows."
        )
    if windows.n_windows and int(windows.example_index.max()) >= len(contexts):
        raise InputError("The windows refer to more contexts than were given; pass every context.")


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
    """Per row, log(sum(exp)) over the masked-in entries only: summing a row at the width of
    its batch would let the padding change the summation order, and so the last bits of a
    score, with what else shares the call."""
    norms = np.empty(len(logits), dtype=logits.dtype)
    for row, (values, keep) in enumerate(zip(logits, mask, strict=True)):
        scored = values[keep]
        peak = scored.max()
        norms[row] = peak + np.log(np.exp(scored - peak).sum())
    return norms


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
