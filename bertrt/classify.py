"""Sequence classification: label, score and every label's probability per text.

Example::

    classifier = Classifier("models/minilm/classifier")
    [result] = classifier("I love Paris", top_k=2)
    result.label, result.score, result.probabilities
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bertrt.errors import BundleError
from bertrt.limits import check_texts, check_top_k
from bertrt.results import Classification, LabelScore
from bertrt.runner import TaskRunner
from bertrt.tokenizer import Encoding
from bertrt.types import Task

LOGITS = "logits"


class Classifier(TaskRunner):
    """Text classification from an exported classifier folder; labels come from the
    manifest's ``labels`` (else ``id2label`` in ``config.json``)."""

    task = Task.CLASSIFY

    def _after_load(self) -> None:
        self.labels: tuple[str, ...] = self.manifest.labels or _config_labels(self.model.directory)
        width = self.session.outputs[LOGITS].shape[-1]
        if isinstance(width, int) and width != len(self.labels):
            raise BundleError(
                f"{self.model.directory} lists {len(self.labels)} labels but the model has "
                f"{width} logits; re-export the bundle."
            )

    def __call__(self, texts: str | Sequence[str], *, top_k: int = 1) -> list[Classification]:
        """Classify ``texts`` (a str is one text); one :class:`Classification` per text.

        ``top_k`` labels (by probability, at most the number of labels) go in ``top``;
        ``top_k`` above ``options.max_top_k`` is an InputError. An empty or blank text is
        classified as the empty input ``[CLS] [SEP]``.
        """
        texts = check_texts(texts, self.options)
        k = min(check_top_k(top_k, self.options), len(self.labels))

        def postprocess(outputs: Mapping[str, np.ndarray], batch: list[Encoding]) -> list[Classification]:
            probabilities = softmax(outputs[LOGITS])
            # Stable sort on negated probabilities: ties keep label order. One sort and one
            # conversion to Python floats per batch, not per text: a single request is
            # mostly this bookkeeping once the model has run.
            tops = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k].tolist()
            rows = probabilities.tolist()
            return [self._result(row, top, e.truncated) for row, top, e in zip(rows, tops, batch, strict=True)]

        return self._run_texts(texts, postprocess)

    def _result(self, probabilities: list[float], top_ids: list[int], truncated: bool) -> Classification:
        top = tuple(LabelScore(self.labels[i], probabilities[i]) for i in top_ids)
        return Classification(
            label=top[0].label,
            score=top[0].score,
            top=top,
            probabilities=dict(zip(self.labels, probabilities, strict=True)),
            truncated=truncated,
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted first).

    >>> softmax(np.array([[0.0, 0.0]])).tolist()
    [[0.5, 0.5]]
    """
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return probabilities


def _config_labels(model_dir: Path) -> tuple[str, ...]:
    path = model_dir / "config.json"
    try:
        id2label = json.loads(path.read_text(encoding="utf-8"))["id2label"]
        return tuple(id2label[str(i)] for i in range(len(id2label)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(
            f"{model_dir} names no labels (manifest `labels` or id2label in config.json); "
            "re-export the bundle."
        ) from exc
