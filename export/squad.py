"""SQuAD data: loading, the official v1.1 scores, and training features for a QA head.

Example::

    examples = load_squad(Path("dev-v1.1.json"), limit=100)
    squad_scores({e.id: "Denver Broncos" for e in examples}, examples)
    # {"exact_match": ..., "f1": ..., "count": 100}
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from bertrt.errors import ConfigError
from bertrt.qa_windows import CLS_POSITION, QAWindows, encode_qa

# Examples tokenized per call when building features: bounds the padded window arrays.
FEATURE_CHUNK = 256
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


@dataclass(frozen=True)
class SquadExample:
    """One question on one paragraph with its ground-truth answers (empty when unanswerable)."""

    id: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int]
    title: str = ""


def load_squad(path: Path, limit: int | None = None) -> list[SquadExample]:
    """The questions of a SQuAD-format JSON file in file order, the first ``limit`` only if given.

    Example::

        load_squad(Path("dev-v1.1.heldout8.json"), limit=8)[0].question
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"SQuAD file {path} does not exist; pass the path of a SQuAD v1.1 JSON file.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"SQuAD file {path} cannot be read as JSON ({exc}); pass a SQuAD v1.1 file.") from exc
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be 1 or more, got {limit}.")
    try:
        examples = list(_iter_examples(data, limit))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{path} is not in the SQuAD layout (missing or bad {exc}); expected "
            '{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}.'
        ) from exc
    if not examples:
        raise ConfigError(f"{path} holds no SQuAD questions; pass a file with at least one.")
    return examples


def _iter_examples(data: Mapping[str, Any], limit: int | None) -> Iterator[SquadExample]:
    count = 0
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            context = str(paragraph["context"])
            for qa in paragraph["qas"]:
                if limit is not None and count >= limit:
                    return
                answers = qa.get("answers") or []
                yield SquadExample(
                    id=str(qa["id"]),
                    question=str(qa["question"]),
                    context=context,
                    answers=[str(a["text"]) for a in answers],
                    answer_starts=[int(a["answer_start"]) for a in answers],
                    title=str(article.get("title", "")),
                )
                count += 1


def normalize_answer(text: str) -> str:
    """Official SQuAD normalization: lower-case, drop punctuation and a/an/the, squeeze spaces.

    Example::

        normalize_answer("The  Denver Broncos!")  # "denver broncos"
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, ground_truth: str) -> float:
    """1.0 when both normalize to the same string, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """Official SQuAD token-overlap F1 (0..1) of normalized answers.

    Example::

        f1_score("Denver Broncos", "the Broncos")  # 2/3
    """
    predicted = normalize_answer(prediction).split()
    truth = normalize_answer(ground_truth).split()
    common = sum((Counter(predicted) & Counter(truth)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(truth)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], examples: Sequence[SquadExample]) -> dict[str, Any]:
    """Official SQuAD v1.1 EM and F1 in percent (0..100), each the best over an example's answers.

    An example without a prediction scores 0, as in the official script.

    Example::

        squad_scores({"q1": "Paris"}, examples)  # {"exact_match": 100.0, "f1": 100.0, "count": 1}
    """
    if not examples:
        raise ConfigError("No SQuAD examples to score; pass at least one.")
    em_total = f1_total = 0.0
    for example in examples:
        prediction = predictions.get(example.id)
        truths = example.answers or [""]
        if prediction is None:
            continue
        em_total += max(exact_match(prediction, truth) for truth in truths)
        f1_total += max(f1_score(prediction, truth) for truth in truths)
    count = len(examples)
    return {"exact_match": 100.0 * em_total / count, "f1": 100.0 * f1_total / count, "count": count}


def build_qa_train_features(
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[SquadExample],
    max_length: int,
    doc_stride: int,
) -> Dataset:
    """Training windows of SQuAD examples with their answer token positions (the HF recipe).

    Windows come from :func:`bertrt.qa_windows.encode_qa`, the same windowing the runtime uses.
    Each window is labelled with the tokens where the first ground-truth answer starts and
    ends; a window that does not hold the whole answer (or an unanswerable example) points
    both at ``[CLS]`` (0). Rows are left unpadded for a padding data collator.

    Example::

        features = build_qa_train_features(tokenizer, examples, max_length=384, doc_stride=128)
        features.column_names  # input_ids, attention_mask, token_type_ids, start/end_positions
    """
    # A private copy: encode_qa reconfigures truncation, which must not leak into the caller's tokenizer.
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    columns: dict[str, list[Any]] = {
        name: [] for name in ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")
    }
    for begin in range(0, len(examples), FEATURE_CHUNK):
        chunk = examples[begin : begin + FEATURE_CHUNK]
        windows = encode_qa(backend, [e.question for e in chunk], [e.context for e in chunk], max_length, doc_stride)
        starts, ends = answer_token_positions(windows, chunk)
        lengths = windows.attention_mask.sum(axis=1)
        for row, length in enumerate(lengths):
            for name, values in windows.feeds().items():
                columns[name].append(values[row, :length].tolist())
        columns["start_positions"].extend(starts.tolist())
        columns["end_positions"].extend(ends.tolist())
    return Dataset.from_dict(columns)


def answer_token_positions(windows: QAWindows, examples: Sequence[SquadExample]) -> tuple[np.ndarray, np.ndarray]:
    """Start and end token of each window's answer; ``[CLS]`` where the window lacks it."""
    n = windows.n_windows
    starts = np.full(n, CLS_POSITION, dtype=np.int64)
    ends = np.full(n, CLS_POSITION, dtype=np.int64)
    for row in range(n):
        example = examples[int(windows.example_index[row])]
        if not example.answers:
            continue
        char_start = example.answer_starts[0]
        char_end = char_start + len(example.answers[0])
        tokens = np.flatnonzero(windows.context_mask[row])
        offsets = windows.offsets[row, tokens]
        if offsets[0, 0] > char_start or offsets[-1, 1] < char_end:
            continue
        # Last token starting at or before the answer; first token ending at or after it.
        starts[row] = tokens[np.flatnonzero(offsets[:, 0] <= char_start)[-1]]
        ends[row] = tokens[np.flatnonzero(offsets[:, 1] >= char_end)[0]]
    return starts, ends
