"""Typed, frozen results of the three tasks; each converts to a JSON-ready dict.

Example::

    result = classifier(["I love Paris"])[0]
    result.label, result.score          # ('POSITIVE', 0.98)
    json.dumps(result.to_dict())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Embedding:
    """One text's sentence vector and, optionally, its per-token embeddings.

    ``tokens`` are the WordPiece tokens (special tokens included) that the rows of
    ``token_embeddings`` (``(len(tokens), hidden)``) belong to; ``truncated`` says the text
    was cut at the model's maximum length.
    """

    vector: np.ndarray
    tokens: tuple[str, ...]
    token_embeddings: np.ndarray | None
    pooling: str
    normalized: bool
    truncated: bool

    def to_dict(self, include_token_embeddings: bool = True) -> dict[str, Any]:
        """Plain lists and floats; token embeddings only when present and asked for."""
        data: dict[str, Any] = {
            "vector": self.vector.tolist(),
            "dim": int(self.vector.shape[0]),
            "pooling": self.pooling,
            "normalized": self.normalized,
            "tokens": list(self.tokens),
            "truncated": self.truncated,
        }
        if include_token_embeddings and self.token_embeddings is not None:
            data["token_embeddings"] = self.token_embeddings.tolist()
        return data


@dataclass(frozen=True)
class LabelScore:
    """A label and its probability."""

    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        """``{"label": ..., "score": ...}``."""
        return {"label": self.label, "score": self.score}


@dataclass(frozen=True)
class Classification:
    """The predicted ``label`` with its probability ``score``, the ``top`` k labels by
    probability, every label's probability (softmax of the logits) and the truncation flag."""

    label: str
    score: float
    top: tuple[LabelScore, ...]
    probabilities: dict[str, float]
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "label": self.label,
            "score": self.score,
            "top": [item.to_dict() for item in self.top],
            "probabilities": dict(self.probabilities),
            "truncated": self.truncated,
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


@dataclass(frozen=True)
class QAResult:
    """Answers to one (question, context) pair, best first.

    Each :class:`Answer` is the exact substring ``context[start:end]``
    with its score; an empty ``text`` is the no-answer result (when a null threshold is
    set). ``windows`` is how many model windows covered the context.
    """

    answers: tuple[Answer, ...]
    windows: int

    @property
    def best(self) -> Answer | None:
        """The best answer, or None when there is none."""
        return self.answers[0] if self.answers else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {"answers": [a.to_dict() for a in self.answers], "windows": self.windows}
