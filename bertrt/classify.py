"""Sequence classification: label, score and every label's probability per text.

Example::

    classifier = Classifier("models/minilm/classifier")
    [result] = classifier("I love Paris", top_k=2)
    result.label, result.score, result.probabilities
"""

from __future__ import annotations

import json
import math
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
# Up to this many logits per batch, probabilities are computed in Python floats (see
# ``Classifier.__call__``); beyond, with NumPy.
PYTHON_SOFTMAX_MAX = 256


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
            logits = outputs[LOGITS]
            if logits.size <= PYTHON_SOFTMAX_MAX:
                # A few logits: plain Python floats. Right after a model run the caches hold
                # the model's weights, and each NumPy call costs tens of microseconds to
                # bring its code back, more than the arithmetic of a few labels.
                rows = [softmax_row(row) for row in logits.tolist()]
                tops = [top_indices(row, k) for row in rows]
            else:
                probabilities = softmax(logits)
                # Stable sort on negated probabilities: ties keep label order.
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


def softmax_row(logits: list[float]) -> list[float]:
    """One row's softmax in Python floats (float64; the maximum is subtracted first), equal
    to :func:`softmax` on that row up to the last bit of ``exp``.

    >>> softmax_row([0.0, 0.0])
    [0.5, 0.5]
    """
    largest = max(logits)
    exp = [math.exp(value - largest) for value in logits]
    total = sum(exp)
    return [value / total for value in exp]


def top_indices(probabilities: list[float], k: int) -> list[int]:
    """The indices of the ``k`` largest probabilities, largest first; ties keep index order.

    >>> top_indices([0.2, 0.4, 0.4], 2)
    [1, 2]
    """
    if k == 1:
        return [probabilities.index(max(probabilities))]  # the first of equal maxima
    return sorted(range(len(probabilities)), key=lambda index: -probabilities[index])[:k]


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
