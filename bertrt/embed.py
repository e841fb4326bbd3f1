"""Embeddings: token vectors (``last_hidden_state``) and one sentence vector per text.

Example::

    embedder = Embedder("models/minilm/embedder")
    [result] = embedder("I love Paris", pooling="mean", normalize=True)
    result.vector.shape          # (384,)
    result.tokens                # ('[CLS]', 'i', 'love', 'paris', '[SEP]')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bertrt.errors import ConfigError
from bertrt.limits import check_texts
from bertrt.options import coerce_enum
from bertrt.results import Embedding
from bertrt.runner import TaskRunner
from bertrt.tokenizer import Encoding
from bertrt.types import Pooling, Task

HIDDEN = "last_hidden_state"
POOLER = "pooler_output"


class Embedder(TaskRunner):
    """Sentence and token embeddings from an exported encoder folder."""

    task = Task.EMBED

    def __call__(
        self,
        texts: str | Sequence[str],
        *,
        pooling: Pooling | str = Pooling.MEAN,
        normalize: bool = False,
        token_embeddings: bool = True,
    ) -> list[Embedding]:
        """Embed ``texts`` (a str is one text); one :class:`Embedding` per text, in order.

        ``pooling``: ``cls`` (the first token's vector), ``mean`` (average over real
        tokens, padding excluded) or ``pooler`` (the model's ``pooler_output``, tanh dense
        over ``[CLS]``). ``normalize`` scales each sentence vector to unit L2 norm.
        ``token_embeddings=False`` skips copying the per-token vectors. An empty or blank
        text is embedded as the empty input ``[CLS] [SEP]``; a text longer than the window
        is cut there (``truncated``).
        """
        texts = check_texts(texts, self.options)
        mode = coerce_enum(Pooling, pooling, "pooling")
        if mode is Pooling.POOLER and POOLER not in self.session.outputs:
            raise ConfigError(
                f"This embedder has no {POOLER!r} output, so pooling 'pooler' is impossible; "
                "use --pooling cls or mean."
            )

        def postprocess(outputs: Mapping[str, np.ndarray], batch: list[Encoding]) -> list[Embedding]:
            # fp16 variants return float16; pool and hand out float32.
            hidden = outputs[HIDDEN].astype(np.float32, copy=False)
            vectors = _pool(mode, outputs, hidden, [len(e) for e in batch])
            if normalize:
                vectors = _l2_normalize(vectors)
            return [
                Embedding(
                    vector=vectors[row],
                    tokens=encoding.tokens,
                    token_embeddings=hidden[row, : len(encoding)].copy() if token_embeddings else None,
                    pooling=mode.value,
                    normalized=normalize,
                    truncated=encoding.truncated,
                )
                for row, encoding in enumerate(batch)
            ]

        # Only the outputs the pooling reads are fetched and checked.
        return self._run_texts(texts, postprocess, [HIDDEN, POOLER] if mode is Pooling.POOLER else [HIDDEN])


def _pool(
    mode: Pooling, outputs: Mapping[str, np.ndarray], hidden: np.ndarray, lengths: list[int]
) -> np.ndarray:
    """``(batch, hidden)`` sentence vectors from ``(batch, seq, hidden)`` token vectors."""
    if mode is Pooling.CLS:
        return hidden[:, 0].copy()
    if mode is Pooling.POOLER:
        return outputs[POOLER].astype(np.float32)
    width = hidden.shape[1]
    if min(lengths) == width:
        # No padding (a single text, equal lengths): the plain mean, as add.reduce and a
        # division, which is what ndarray.mean computes (bit for bit) without its Python layer.
        plain: np.ndarray = np.add.reduce(hidden, axis=1) / width
        return plain
    # Mask-aware mean: padding rows must not dilute the average.
    mask = (np.arange(hidden.shape[1])[None, :] < np.asarray(lengths)[:, None]).astype(hidden.dtype)
    summed = np.einsum("bsh,bs->bh", hidden, mask)
    mean: np.ndarray = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
    return mean


def _l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # A zero vector stays zero instead of becoming NaN.
    unit: np.ndarray = vectors / np.maximum(norms, np.finfo(vectors.dtype).tiny)
    return unit
