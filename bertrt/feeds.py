"""Model feeds: token rows padded into the three BERT inputs, and the one rule for the pad id.

Every place that runs a BERT graph builds its feeds here: the runners' text batches
(:mod:`bertrt.tokenizer`), QA windows (:mod:`bertrt.qa_windows`), and the export stage's int8
calibration batches and probe batches. Rows are padded on the right to the longest row (or a
wider ``width``); ``attention_mask`` is 1 on real tokens and 0 on padding; ``token_type_ids``
are the rows' own (0 where none are given, and on padding).

Example::

    batch = pad_rows([[101, 7592, 102], [101, 102]], pad_id=0)
    batch.attention_mask        # [[1, 1, 1], [1, 1, 0]]
    session.run(batch.feeds())  # {"input_ids", "attention_mask", "token_type_ids"}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from bertrt.errors import InputError

IntArray = npt.NDArray[np.int64]
TokenRow = Sequence[int] | IntArray
# The pad id when neither the tokenizer nor the model config names one: BERT's [PAD].
DEFAULT_PAD_ID = 0
PAD_TOKEN = "[PAD]"


@dataclass(frozen=True)
class TokenBatch:
    """A padded batch: ``input_ids``, ``attention_mask`` and ``token_type_ids``, each
    ``(batch, width)`` int64."""

    input_ids: IntArray
    attention_mask: IntArray
    token_type_ids: IntArray

    def feeds(self) -> dict[str, IntArray]:
        """The arrays by their usual graph input names; feed only those the graph declares."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }


def pad_rows(
    ids: Sequence[TokenRow],
    pad_id: int,
    type_ids: Sequence[TokenRow] | None = None,
    width: int | None = None,
) -> TokenBatch:
    """Right-pad token rows (special tokens included) into a :class:`TokenBatch`.

    ``type_ids`` gives each row's segment ids (all 0 when omitted); ``width`` pads past the
    longest row (it may not be shorter). An empty ``ids`` gives ``(0, width or 0)`` arrays.

    >>> pad_rows([[101, 102], [101]], pad_id=0).input_ids.tolist()
    [[101, 102], [101, 0]]
    """
    lengths = [len(row) for row in ids]
    longest = max(lengths, default=0)
    if width is None:
        width = longest
    elif width < longest:
        raise InputError(f"Cannot pad rows of up to {longest} tokens to width {width}; pass {longest} or more.")
    if type_ids is not None and len(type_ids) != len(ids):
        raise InputError(f"Got {len(ids)} rows of token ids but {len(type_ids)} of type ids; pass one per row.")
    if len(ids) == 1 and lengths[0] == width and isinstance(ids[0], np.ndarray) and ids[0].dtype == np.int64:
        # One int64 row of full width (a single request): views of it, nothing copied.
        single = ids[0].reshape(1, width)
        types = np.zeros_like(single) if type_ids is None else np.asarray(type_ids[0], dtype=np.int64).reshape(1, width)
        return TokenBatch(single, np.ones_like(single), types)
    if ids and all(n == width for n in lengths):
        # Nothing to pad (a single text, equal lengths): stack the rows.
        types = np.zeros((len(ids), width), dtype=np.int64) if type_ids is None else _stack(type_ids)
        return TokenBatch(_stack(ids), np.ones((len(ids), width), dtype=np.int64), types)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(ids), width), dtype=np.int64)
    token_type_ids = np.zeros((len(ids), width), dtype=np.int64)
    for row, tokens in enumerate(ids):
        n = len(tokens)
        input_ids[row, :n] = tokens
        attention_mask[row, :n] = 1
        if type_ids is not None:
            token_type_ids[row, :n] = type_ids[row]
    return TokenBatch(input_ids, attention_mask, token_type_ids)


def _stack(rows: Sequence[TokenRow]) -> IntArray:
    return np.array(rows, dtype=np.int64, ndmin=2)


def pad_token_id(tokenizer: Tokenizer, model_dir: Path | None = None) -> int:
    """The id to pad ``tokenizer``'s rows with: its padding settings' ``pad_id``, else its
    ``[PAD]`` token, else ``pad_token_id`` in ``model_dir/config.json``, else 0.

    Read it before reconfiguring the tokenizer: ``no_padding()`` clears the first source.
    """
    padding = tokenizer.padding
    if padding is not None:
        return int(padding["pad_id"])
    token_id = tokenizer.token_to_id(PAD_TOKEN)
    if token_id is not None:
        return int(token_id)
    config_path = None if model_dir is None else model_dir / "config.json"
    if config_path is not None and config_path.is_file():
        pad = json.loads(config_path.read_text(encoding="utf-8")).get("pad_token_id")
        if isinstance(pad, int):
            return pad
    return DEFAULT_PAD_ID
