"""Batch lanes: a CPU call with at least one batch per thread runs whole batches side by side.

ONNX Runtime splits every operator of a run across the session's intra-op threads, and
the threads meet at a barrier after each one. For the small operators of a BERT forward
(layer norms, GELU, the attention of short texts) the split costs more than it saves. A
call that brings several batches can skip the barriers: each of ``T`` lanes runs whole
batches on one thread of its own, so ``T`` batches run at once on the ``T`` threads the
session was given. Each lane takes batches of ``batch_size / T`` texts, so the tokens in
flight, and the working memory they take, stay those of one full batch. A call with fewer
full batches than threads runs them in turn, each on every thread, as a single request does.

The lanes share one extra session of the same file, opened with one intra-op thread on
first use (ONNX Runtime runs a one-thread session on the calling thread, and its
``run`` may be called from many threads at once). That costs a second copy of the
weights, made only by processes that run multi-batch calls.

Measured with ``python -m bertrt.bench.lanes`` on the MiniLM bundle (2-core Xeon, W2's 500
mixed reviews and W3's 200 SQuAD questions in one call each): two lanes of 16 ran 1.08-1.47x
as fast as batches of 32 in turn on two threads, int8 gaining most, with the same results
(``benchmarks/README.md``, "Batch lanes").

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

    ``batches`` counts the call's batches at the full batch size. ``setting`` is
    :attr:`bertrt.RuntimeOptions.batch_lanes`: 0 (auto) gives one lane per intra-op thread
    of the session (``threads``; 0 means ONNX Runtime's own pick, one per core), and only to
    a call with at least that many batches, so lanes never leave a thread idle that would
    otherwise work; 1 turns lanes off; ``n`` asks for ``n`` lanes whenever the call has two
    batches or more.
    """
    if setting == 1 or batches < 2:
        return 1
    if setting > 1:
        return min(setting, batches)
    lanes = most_lanes(setting, threads)
    return lanes if lanes >= 2 and batches >= lanes else 1


def most_lanes(setting: int, threads: int) -> int:
    """The most lanes any call gets (the size of a runner's lane pool): ``setting`` when it
    names a number, else one per intra-op thread (``threads``, or the usable cores for 0)."""
    if setting > 1:
        return setting
    return threads if threads > 0 else usable_cores()


def lane_batch_size(batch_size: int, lanes: int) -> int:
    """The batch size of each of ``lanes`` lanes: their batches together hold one batch of
    ``batch_size`` (rounded up), so lanes add no working memory.

    >>> lane_batch_size(32, 2), lane_batch_size(32, 1), lane_batch_size(3, 2)
    (16, 32, 2)
    """
    return -(-batch_size // lanes)


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
