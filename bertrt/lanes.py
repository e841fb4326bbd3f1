"""Batch lanes: a CPU call with at least one batch per thread runs whole batches side by side.

ONNX Runtime splits every operator of a run across the session's intra-op threads, and
the threads meet at a barrier after each one. For the small operators of a BERT forward
(layer norms, GELU, the attention of short texts) the split costs more than it saves. A
call that brings several batches can skip the barriers: each of ``T`` lanes runs whole
batches on one thread of its own, so ``T`` batches run at once on the ``T`` threads the
session was given. A call with fewer batches than threads runs them in turn, each on
every thread, as a single request does.

The lanes share one extra session of the same file, opened with one intra-op thread on
first use (ONNX Runtime runs a one-thread session on the calling thread, and its
``run`` may be called from many threads at once). That costs a second copy of the
weights, made only by processes that run multi-batch calls.

Measured on the W2 stream (1,000 mixed reviews, batches of 32 sorted by length, 2-core
Xeon, MiniLM): two lanes took 0.90-0.94x the time of the same batches run in turn on two
threads, fp32 and int8 alike (``benchmarks/README.md``, "Batch lanes").

Example::

    >>> lane_count(setting=0, batches=5, threads=2)
    2
    >>> lane_count(setting=0, batches=1, threads=2)   # one batch: every thread on it
    1
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def lane_count(setting: int, batches: int, threads: int) -> int:
    """How many lanes a call of ``batches`` batches runs on (1: in turn, on every thread).

    ``setting`` is :attr:`bertrt.RuntimeOptions.batch_lanes`: 0 (auto) gives one lane per
    intra-op thread of the session (``threads``; 0 means ONNX Runtime's own pick, one per
    core), and only to a call with at least that many batches, so lanes never leave a
    thread idle that would otherwise work; 1 turns lanes off; ``n`` asks for ``n`` lanes
    whenever the call has two batches or more.
    """
    if setting == 1 or batches < 2:
        return 1
    if setting > 1:
        return min(setting, batches)
    lanes = threads if threads > 0 else usable_cores()
    return lanes if lanes >= 2 and batches >= lanes else 1


class LanePool:
    """The worker threads of one runner's lanes, started on first use and shared by every
    call (concurrent calls queue their batches on the same lanes).

    Thread-safe. A failing batch cancels the call's batches not yet started and re-raises.
    """

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        self._executor = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="bertrt-lane")

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(item) for item in items]``, run on the lanes; results in ``items`` order."""
        futures: list[Future[R]] = [self._executor.submit(fn, item) for item in items]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()  # no-op for finished ones; frees the lanes after a failure

    def close(self) -> None:
        """Stop the worker threads once their current batches end."""
        self._executor.shutdown(wait=False, cancel_futures=True)
