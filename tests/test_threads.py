"""One loaded bundle hammered by 8 threads gives exactly the sequential results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bertrt
from bertrt import RuntimeOptions

THREADS = 8
ROUNDS = 6
TEXTS = [
    "i love paris",
    "the film was very bad",
    "what is the capital of france? " * 12,
    "a",
    "the plot of the movie is good and the actors are great",
    "",
]
CONTEXT = "paris is the capital of france. the immune system is a body system which has cells. "
PAIRS = [("what is the capital?", CONTEXT * 3), ("what has cells?", CONTEXT), ("who?", "the actors")]


def snapshot(bundle: bertrt.Bundle, offset: int) -> list[Any]:
    """Every task's results for a rotation of the inputs (threads disagree on batch contents)."""
    texts = TEXTS[offset:] + TEXTS[:offset]
    pairs = PAIRS[offset % 3 :] + PAIRS[: offset % 3]
    return [
        [r.vector for r in bundle.embedder(texts, pooling="mean")],
        [r.probabilities for r in bundle.classifier(texts)],
        [r.to_dict() for r in bundle.qa([q for q, _ in pairs], [c for _, c in pairs], top_k=2)],
    ]


def same(a: list[Any], b: list[Any]) -> bool:
    vectors_equal = all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True))
    return vectors_equal and a[1] == b[1] and a[2] == b[2]


@pytest.mark.filterwarnings("ignore:The qa head")
@pytest.mark.usefixtures("frequent_switches")
@pytest.mark.parametrize("io_binding", [True, False])
def test_eight_threads_match_a_sequential_run(tiny_bundle: Path, io_binding: bool, concurrently: Any) -> None:
    # Small batches: every call runs several batches of different widths, so buffers grow
    # and are reused while other threads run.
    bundle = bertrt.load(
        tiny_bundle, device="cpu", options=RuntimeOptions(batch_size=2, io_binding=io_binding)
    )
    expected = {offset: snapshot(bundle, offset) for offset in range(THREADS)}
    mismatches: list[str] = []

    def hammer(offset: int) -> None:
        for round_ in range(ROUNDS):
            key = (offset + round_) % THREADS
            if not same(snapshot(bundle, key), expected[key]):
                mismatches.append(f"thread {offset}, round {round_}")

    concurrently(hammer, THREADS)
    assert mismatches == []


@pytest.mark.filterwarnings("ignore:The qa head")
def test_first_use_from_many_threads_loads_each_runner_once(tiny_bundle: Path, concurrently: Any) -> None:
    bundle = bertrt.load(tiny_bundle, device="cpu")
    seen: list[int] = []
    concurrently(lambda _: seen.append(id(bundle.classifier)), THREADS)
    assert len(seen) == THREADS and len(set(seen)) == 1
