"""SQuAD data: loading, the official v1.1 scores, and training features for a QA head.

SQuAD questions load from three kinds of source, through one path (:func:`load_squad`):

- a SQuAD-format JSON file (``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``);
- a folder written by ``datasets``' ``save_to_disk``, with the columns of the hub's
  ``rajpurkar/squad`` (``id``, ``title``, ``context``, ``question``,
  ``answers: {"text": [...], "answer_start": [...]}``);
- a ``datasets`` hub id such as ``rajpurkar/squad``.

A folder or hub id that holds several splits names one after a colon: ``rajpurkar/squad:train``,
``squad-folder:validation``. Either way each question becomes the same :class:`SquadExample`.

Example::

    examples = load_squad("dev-v1.1.json", limit=100)       # or "rajpurkar/squad:validation"
    squad_scores({e.id: "Denver Broncos" for e in examples}, examples)
    # {"exact_match": ..., "f1": ..., "count": 100}
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import islice
from pathlib import Path
from typing import Any

import datasets
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
# A hub dataset id: ``name`` or ``owner/name``, then an optional ``:split``.
_HUB_ID = re.compile(r"(?P<id>[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?)(?::(?P<split>[\w.-]+))?")
_COLUMNS = ("id", "question", "context", "answers")
SOURCE_FORMS = (
    "a SQuAD-format JSON file, a folder written by datasets' save_to_disk, "
    "or a datasets hub id with its split such as rajpurkar/squad:train"
)


@dataclass(frozen=True)
class SquadExample:
    """One question on one paragraph with its ground-truth answers (empty when unanswerable)."""

    id: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int]
    title: str = ""


class SourceKind(str, Enum):
    """Where SQuAD questions are read from."""

    JSON = "json"  # a SQuAD-format JSON file
    DISK = "disk"  # a folder written by datasets' save_to_disk
    HUB = "hub"  # a datasets hub id


@dataclass(frozen=True)
class SquadSource:
    """A parsed ``--qa-data`` value: its kind, its path or hub id, and the split it names."""

    kind: SourceKind
    location: str
    split: str | None = None

    @classmethod
    def parse(cls, source: str | Path) -> SquadSource:
        """Tell a JSON file, a ``save_to_disk`` folder (``DIR[:SPLIT]``) and a hub id
        (``ID[:SPLIT]``) apart; a local path must exist (ConfigError otherwise).

        >>> SquadSource.parse("rajpurkar/squad:train")
        SquadSource(kind=<SourceKind.HUB: 'hub'>, location='rajpurkar/squad', split='train')
        """
        text = str(source)
        path = Path(text).expanduser()
        if path.is_file():
            return cls(SourceKind.JSON, str(path))
        if path.is_dir():
            return cls(SourceKind.DISK, str(path))
        folder, colon, split = text.rpartition(":")
        if colon and split and Path(folder).expanduser().is_dir():
            return cls(SourceKind.DISK, str(Path(folder).expanduser()), split)
        hub = _HUB_ID.fullmatch(text)
        if hub is None or isinstance(source, Path) or hub["id"].endswith(".json"):
            raise ConfigError(f"SQuAD data {text} does not exist; pass {SOURCE_FORMS}.")
        return cls(SourceKind.HUB, hub["id"], hub["split"])

    @property
    def name(self) -> str:
        """A short label for logs and manifests: the file or folder name, or the hub id, with the split."""
        base = self.location if self.kind is SourceKind.HUB else Path(self.location).name
        return f"{base}:{self.split}" if self.split else base


def check_squad_source(source: str | Path) -> SquadSource:
    """Parse ``source`` and, for a hub id, check that the hub (or the local cache) knows the
    dataset and its split, so a bad ``--qa-data`` fails before any training starts."""
    parsed = SquadSource.parse(source)
    if parsed.kind is SourceKind.HUB:
        _hub_split(parsed)
    return parsed


def load_squad(source: str | Path | SquadSource, limit: int | None = None) -> list[SquadExample]:
    """The questions of a SQuAD source in its order, the first ``limit`` only if given.

    ``source`` is a JSON file, a ``save_to_disk`` folder or a hub id (see the module notes).

    Example::

        load_squad(Path("dev-v1.1.heldout8.json"), limit=8)[0].question
        load_squad("rajpurkar/squad:validation", limit=8)[0].question   # the same question
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be 1 or more, got {limit}.")
    parsed = source if isinstance(source, SquadSource) else SquadSource.parse(source)
    if parsed.kind is SourceKind.JSON:
        rows = _json_rows(Path(parsed.location))
    else:
        dataset = _hub_dataset(parsed) if parsed.kind is SourceKind.HUB else _disk_dataset(parsed)
        missing = [c for c in _COLUMNS if c not in dataset.column_names]
        if missing:
            raise ConfigError(
                f"{parsed.location} lacks the SQuAD column(s) {', '.join(missing)}; pass data with the columns of "
                "rajpurkar/squad (id, title, context, question, answers)."
            )
        rows = iter(dataset)
    try:
        examples = [_example(row) for row in islice(rows, limit)]
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"{parsed.location} is not in the SQuAD layout (missing or bad {exc}); expected "
            '{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]} or the columns of rajpurkar/squad.'
        ) from exc
    if not examples:
        raise ConfigError(f"{parsed.location} holds no SQuAD questions; pass data with at least one.")
    return examples


def _example(row: Mapping[str, Any]) -> SquadExample:
    """One row in the hub's SQuAD layout as a :class:`SquadExample`."""
    answers = row["answers"] or {"text": [], "answer_start": []}
    return SquadExample(
        id=str(row["id"]),
        question=str(row["question"]),
        context=str(row["context"]),
        answers=[str(text) for text in answers["text"]],
        answer_starts=[int(start) for start in answers["answer_start"]],
        title=str(row.get("title") or ""),
    )


def _json_rows(path: Path) -> Iterator[dict[str, Any]]:
    """A SQuAD JSON file's questions as rows in the hub's layout, in file order."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"SQuAD file {path} cannot be read as JSON ({exc}); pass a SQuAD v1.1 file.") from exc
    return _flatten(data)


def _flatten(data: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                answers: Iterable[Mapping[str, Any]] = qa.get("answers") or []
                yield {
                    "id": qa["id"],
                    "title": article.get("title", ""),
                    "context": context,
                    "question": qa["question"],
                    "answers": {
                        "text": [a["text"] for a in answers],
                        "answer_start": [a["answer_start"] for a in answers],
                    },
                }


def _disk_dataset(source: SquadSource) -> Dataset:
    try:
        loaded = datasets.load_from_disk(source.location)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"{source.location} is a folder but not one written by datasets' save_to_disk ({exc}); pass {SOURCE_FORMS}."
        ) from exc
    if isinstance(loaded, Dataset):
        if source.split is not None:
            raise ConfigError(f"{source.location} holds a single data set without splits; drop ':{source.split}'.")
        return loaded
    return loaded[_pick_split(source, list(loaded))]


def _hub_dataset(source: SquadSource) -> Dataset:
    split = _hub_split(source)
    try:
        return datasets.load_dataset(source.location, split=split)
    except (ConnectionError, FileNotFoundError) as exc:
        raise _hub_error(source, exc) from exc


def _hub_split(source: SquadSource) -> str:
    """The split to read from a hub dataset, checked against the splits it has."""
    try:
        splits = datasets.get_dataset_split_names(source.location)
    except (ConnectionError, FileNotFoundError) as exc:
        raise _hub_error(source, exc) from exc
    return _pick_split(source, splits)


def _pick_split(source: SquadSource, splits: Sequence[str]) -> str:
    if source.split is not None and source.split in splits:
        return source.split
    if source.split is None and len(splits) == 1:
        return splits[0]
    if not splits:
        raise ConfigError(f"{source.location} holds no data split; pass {SOURCE_FORMS}.")
    problem = f"has no split {source.split!r}" if source.split is not None else "has several splits"
    raise ConfigError(
        f"{source.location} {problem}; name one of {', '.join(splits)} after a colon, "
        f"as in {source.location}:{splits[0]}."
    )


def _hub_error(source: SquadSource, exc: BaseException) -> ConfigError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return ConfigError(
        f"{source.location} is no local file or folder and the Hugging Face Hub cannot provide it as a dataset "
        f"({reason}); pass a local SQuAD JSON file or save_to_disk folder, or connect to the hub "
        "(with HF_DATASETS_OFFLINE and HF_HUB_OFFLINE unset)."
    )


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
