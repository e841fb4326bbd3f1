"""Cutting a request into batches, grouped by length, and putting results back in order.

A batch is padded to its longest member, so mixing a 5-token text with a 250-token one
makes the short text pay for 250 positions. Sorting by length before cutting keeps
batches homogeneous. The sort is longest-first: the first batch of a call is its widest,
so the session's output buffers grow at most once per call and are reused after.

Example::

    >>> plan_batches([3, 9, 1, 7], batch_size=2)
    [[1, 3], [0, 2]]
    >>> run_in_batches(["a", "bbb", "cc"], [1, 3, 2], 2, lambda b: [s.upper() for s in b])
    ['A', 'BBB', 'CC']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from bertrt.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")


def plan_batches(lengths: Sequence[int], batch_size: int, group_by_length: bool = True) -> list[list[int]]:
    """Indices ``0..len(lengths)-1`` cut into batches of at most ``batch_size``.

    With ``group_by_length`` the indices are ordered longest first (ties keep the
    caller's order); otherwise they stay in the caller's order.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be 1 or more, got {batch_size}.")
    order = list(range(len(lengths)))
    if group_by_length:
        order.sort(key=lambda i: -lengths[i])  # stable: equal lengths keep input order
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def run_in_batches(
    items: Sequence[T],
    lengths: Sequence[int],
    batch_size: int,
    fn: Callable[[list[T]], Sequence[R]],
    group_by_length: bool = True,
    map_batches: Callable[[list[list[T]]], Sequence[Sequence[R]]] | None = None,
) -> list[R]:
    """Apply ``fn`` (one result per item) batch by batch; results in the order of ``items``.

    ``map_batches``, where given, runs a call's batches instead of ``fn`` one after the
    other (it may run them at once, see :mod:`bertrt.lanes`) and returns each batch's
    results in batch order; a single item is always ``fn``'s.
    """
    if len(items) != len(lengths):
        raise ConfigError(f"{len(items)} items but {len(lengths)} lengths; pass one length per item.")
    if len(items) == 1 and batch_size >= 1:
        # One item is one batch: no plan to make (a single request is mostly bookkeeping).
        [output] = fn([items[0]])
        return [output]
    results: list[R | None] = [None] * len(items)
    plan = plan_batches(lengths, batch_size, group_by_length)
    batches = [[items[i] for i in batch] for batch in plan]
    outputs = map_batches(batches) if map_batches else [fn(batch) for batch in batches]
    for batch, batch_outputs in zip(plan, outputs, strict=True):
        # strict: a batch function that drops or adds results is a bug, not a user error.
        for index, output in zip(batch, batch_outputs, strict=True):
            results[index] = output
    return results  # type: ignore[return-value]  # every slot is filled above
