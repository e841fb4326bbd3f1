"""Batch planning: every item exactly once, bounded batches, longest first, caller's order back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bertrt.batching import plan_batches, run_in_batches
from bertrt.errors import ConfigError

lengths_strategy = st.lists(st.integers(min_value=1, max_value=512), max_size=60)


@given(lengths=lengths_strategy, batch_size=st.integers(min_value=1, max_value=17))
def test_every_index_once_in_bounded_batches(lengths: list[int], batch_size: int) -> None:
    batches = plan_batches(lengths, batch_size)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    # Only the last batch may be short.
    assert all(len(batch) == batch_size for batch in batches[:-1])


@given(lengths=lengths_strategy, batch_size=st.integers(min_value=1, max_value=17))
def test_grouping_sorts_longest_first_and_keeps_ties_in_order(lengths: list[int], batch_size: int) -> None:
    flat = [i for batch in plan_batches(lengths, batch_size) for i in batch]
    keys = [(-lengths[i], i) for i in flat]
    assert keys == sorted(keys)


@given(lengths=lengths_strategy, batch_size=st.integers(min_value=1, max_value=17))
def test_without_grouping_batches_follow_input_order(lengths: list[int], batch_size: int) -> None:
    flat = [i for batch in plan_batches(lengths, batch_size, group_by_length=False) for i in batch]
    assert flat == list(range(len(lengths)))


@given(
    words=st.lists(st.text(max_size=12), max_size=40),
    batch_size=st.integers(min_value=1, max_value=9),
    group=st.booleans(),
)
def test_results_come_back_in_callers_order(words: list[str], batch_size: int, group: bool) -> None:
    seen_batches: list[list[str]] = []

    def fn(batch: list[str]) -> list[str]:
        seen_batches.append(batch)
        return [w[::-1] for w in batch]

    result = run_in_batches(words, [len(w) for w in words], batch_size, fn, group)
    assert result == [w[::-1] for w in words]
    assert all(len(b) <= batch_size for b in seen_batches)


def test_grouping_makes_batches_homogeneous() -> None:
    lengths = [5, 250, 6, 240, 7, 245]
    batches = plan_batches(lengths, batch_size=3)
    assert [sorted(lengths[i] for i in b) for b in batches] == [[240, 245, 250], [5, 6, 7]]


def test_empty_request_makes_no_batches() -> None:
    assert plan_batches([], 4) == []
    assert run_in_batches([], [], 4, lambda batch: batch) == []


def test_bad_batch_size_and_length_count_are_refused() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        plan_batches([1, 2], 0)
    with pytest.raises(ConfigError, match="one length per item"):
        run_in_batches(["a", "b"], [1], 2, lambda batch: batch)


def test_a_batch_function_dropping_results_is_caught() -> None:
    with pytest.raises(ValueError):
        run_in_batches(["a", "b"], [1, 1], 2, lambda batch: batch[:1])
