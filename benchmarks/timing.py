"""Timing primitives: per-call latency percentiles and whole-stream throughput.

Every figure is wall-clock time from ``time.perf_counter_ns`` around the call the user
would make, after untimed warm-up calls (ONNX Runtime and PyTorch both allocate and
plan on their first runs).

Example::

    stats = measure_latency(lambda: classifier("I love Paris"), warmup=5, repeats=200)
    stats.p50_ms, stats.p99_ms
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency over ``count`` timed calls, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def from_seconds(cls, samples: list[float]) -> LatencyStats:
        """Statistics of ``samples`` (seconds per call).

        >>> LatencyStats.from_seconds([0.001, 0.002, 0.003]).p50_ms
        2.0
        """
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(len(ms), float(ms.mean()), float(p50), float(p90), float(p99), float(ms.min()), float(ms.max()))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Throughput:
    """One workload served ``passes`` times: items per second over the fastest pass, and
    the median pass time (a pass is the whole stream, so each holds many batches)."""

    items: int
    passes: int
    best_seconds: float
    median_seconds: float

    @property
    def items_per_s(self) -> float:
        """Items per second in the fastest pass."""
        return self.items / self.best_seconds

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, items/s included."""
        return {**asdict(self), "items_per_s": self.items_per_s}


def measure_latency(
    fn: Callable[[], object],
    *,
    warmup: int,
    repeats: int,
    min_repeats: int = 3,
    max_seconds: float = float("inf"),
) -> LatencyStats:
    """Time ``fn()`` per call: ``warmup`` untimed calls, then up to ``repeats`` timed ones,
    stopping after ``min_repeats`` once ``max_seconds`` of timed calls have passed."""
    samples = time_calls(fn, warmup=warmup, repeats=repeats, min_repeats=min_repeats, max_seconds=max_seconds)
    return LatencyStats.from_seconds(samples)


def time_calls(
    fn: Callable[[], object],
    *,
    warmup: int,
    repeats: int,
    min_repeats: int = 3,
    max_seconds: float = float("inf"),
) -> list[float]:
    """The seconds of each timed call of :func:`measure_latency` (same arguments)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < repeats and (len(samples) < min_repeats or spent < max_seconds):
        start = time.perf_counter_ns()
        fn()
        seconds = (time.perf_counter_ns() - start) / 1e9
        samples.append(seconds)
        spent += seconds
    return samples


def measure_throughput(
    fn: Callable[[], object], items: int, *, passes: int, warmup: Callable[[], object]
) -> Throughput:
    """Time ``passes`` full runs of ``fn()`` (each serving ``items`` items) after one
    ``warmup()`` call, which should run a small slice of the same workload."""
    warmup()
    times = []
    for _ in range(passes):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e9)
    return Throughput(items, passes, min(times), float(np.median(times)))
