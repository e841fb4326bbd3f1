"""Giving freed memory back to the operating system, so resident memory follows the load.

A served BERT allocates its largest buffers per request (the attention scores of a batch
grow with batch x sequence²: tens to hundreds of MB). Two allocators keep such blocks
after they are freed, so a process's resident memory only ever climbs to its worst request
and, with fragmentation, past it:

* ONNX Runtime's CPU memory arena reserves regions in power-of-two steps and never
  returns them by itself. It is also what makes a run fast: tensors freed by one node are
  reused by the next, and by the next run, instead of being mapped afresh. A run can hand
  the arena's free regions back when it ends (the run option
  ``memory.enable_memory_arena_shrinkage``), and the next run then maps and faults in its
  working set again: 800 page faults (3 MB) on a 128-token MiniLM forward, 7,400 (29 MB)
  on 8 x 128, which cost 3-8% of the run. :class:`ArenaPolicy` decides which runs shrink;
* glibc's ``malloc`` serves large blocks with ``mmap`` (returned on ``free``) only below a
  threshold that it *raises* every time such a block is freed, up to 32 MB; past the first
  large request, blocks come from the heap, which fragments and is rarely trimmed.
  :func:`pin_mmap_threshold` fixes the threshold at 128 KiB (glibc's initial value), which
  also stops that adjustment.

``RuntimeOptions(cpu_arena=...)``: ``adaptive`` (the default) follows :class:`ArenaPolicy`;
``shrink`` hands the arena back after every run; ``keep`` never does; ``off`` runs without
an arena.

A CPU forward of more than 1,024 tokens runs as row chunks (:mod:`bertrt.session`); the
policy sees the whole call as one run, and only its last chunk may hand the arena back, so
a cut call leaves memory as its whole batch would, from a working set of one chunk. The
figures below are for whole batches, which is how ``python -m bertrt.bench.arena`` runs them
(``--chunk-tokens 1024`` for the default).

Measured with ``python -m bertrt.bench.arena`` on the MiniLM classifier (fp32, two threads, a
fresh process per mode, two rounds on an idle machine; benchmarks/results/arena-minilm.jsonl):
one 128-token request takes 17.8-17.9 ms with the arena kept, 18.3-20.2 ms shrunk and 19.6 ms
without an arena; 64 mixed reviews take 2.87-2.89 s kept, 3.09-3.24 s shrunk and 4.00-4.18 s
without; a 32 x 256 forward 1,187-1,208 ms kept, 1,264-1,316 ms shrunk, 1,644-1,695 ms
without. Resident memory after the reviews: 1,221-1,225 MB kept (the largest batch's working
set stays), 205 MB shrunk or without. With the request mix
of ``python -m bertrt.bench.soak`` (2,500 requests, one intra-op thread), no arena and glibc's
defaults climbed from 656 to 731 MB in steps, no arena and the pinned threshold stayed
within 387-390 MB.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable

# A run of at most this many tokens (batch x sequence) is small: it keeps what it took from
# the arena, a few MB to a few tens of MB (29 MB for 8 x 128 tokens on MiniLM, about twice
# that on BERT-base), which every later run reuses.
SMALL_RUN_TOKENS = 1024
# Seconds without a run after which a session hands back what its last large runs kept.
IDLE_SHRINK_S = 1.0

# From glibc's <malloc.h>.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024
# glibc's own environment variable for the same setting; an explicit choice wins.
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"

_lock = threading.Lock()
_pinned: bool | None = None


def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at 128 KiB for this process, once; whether it applied.

    A no-op (False) off Linux, on a C library without ``mallopt`` or where it refuses,
    and when ``MALLOC_MMAP_THRESHOLD_`` is set in the environment.

    >>> pin_mmap_threshold() in (True, False)
    True
    """
    global _pinned
    with _lock:
        if _pinned is None:
            _pinned = _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        return _pinned


def _mallopt(parameter: int, value: int) -> bool:
    if not sys.platform.startswith("linux") or MMAP_THRESHOLD_ENV in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(parameter, value) == 1)


class ArenaPolicy:
    """Which runs of one session hand ONNX Runtime's CPU arena back when they end.

    * A small run (at most ``small_run_tokens`` tokens) keeps what it took: single
      requests and small batches run at full speed, and the arena stays as large as the
      largest small run needed;
    * a large run after a small one shrinks the arena when it ends: an isolated large
      request leaves resident memory where it found it;
    * a large run right after another large run keeps the arena: a batch job, a long call cut
      into batches or a benchmark repeating one shape pays the mapping once, not every run;
    * the first small run after such kept large runs shrinks the arena (the burst is over),
      and so does ``shrink_idle`` (a run of the session's own) once ``idle_s`` seconds pass
      without a run: a burst followed by silence does not keep its memory;
    * a large run after such an idle hand-back, with no small run between, is the stream
      resuming: it keeps what it takes (handed back in turn once idle). Were it to shrink,
      the run after it would fault the whole working set in again, and the one after that
      part of it (9,232 page faults in that third run on MiniLM at 64 x 128, against none:
      ``python -m bertrt.bench.arena_rounds``).

    The idle check is one short-lived thread per session, started when a large run keeps
    memory and gone once it has been handed back. Thread-safe; concurrent runs of one
    session only blur which run counts as "the previous one", never a result.

    >>> policy = ArenaPolicy(shrink_idle=lambda: None, small_run_tokens=100)
    >>> [policy.before_run(tokens) for tokens in (10, 500, 500, 500, 10, 10)]
    [False, True, False, False, True, False]
    """

    def __init__(
        self,
        shrink_idle: Callable[[], None],
        small_run_tokens: int = SMALL_RUN_TOKENS,
        idle_s: float = IDLE_SHRINK_S,
    ) -> None:
        self.small_run_tokens = small_run_tokens
        self.idle_s = idle_s
        self._shrink_idle = shrink_idle
        self._lock = threading.Lock()
        self._previous_large = False
        self._held = False  # a large run kept its memory in the arena
        self._in_flight = 0
        self._last_end = 0.0
        self._watcher: threading.Thread | None = None

    @property
    def holds_large_run(self) -> bool:
        """Whether the arena may hold memory that a large run kept."""
        return self._held

    def settled(self, tokens: int) -> bool:
        """Whether a run of ``tokens`` tokens has nothing to decide: a small run while no large
        run is remembered keeps the arena and changes no state, so it may skip
        :meth:`before_run` and :meth:`after_run` (and their lock). Read without the lock: a
        large run starting at the same moment only blurs the order, as concurrent runs do."""
        return tokens <= self.small_run_tokens and not self._previous_large and not self._held

    def before_run(self, tokens: int) -> bool:
        """Call as a run of ``tokens`` tokens starts; whether it should shrink the arena when
        it ends. Pair every call with :meth:`after_run`."""
        large = tokens > self.small_run_tokens
        with self._lock:
            self._in_flight += 1
            shrink = not self._previous_large if large else self._held
            self._previous_large = large
            # What this run leaves behind stays only if it does not shrink; a small run that
            # does not shrink found nothing held.
            self._held = large and not shrink
            return shrink

    def after_run(self) -> None:
        """Call as a run ends (also when it failed)."""
        with self._lock:
            self._in_flight -= 1
            self._last_end = time.monotonic()
            if self._held and self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="bertrt-arena-idle", daemon=True)
                self._watcher.start()

    def _watch(self) -> None:
        """Sleep until the session has been idle ``idle_s`` seconds, then shrink if it still holds."""
        while True:
            with self._lock:
                if not self._held:
                    self._watcher = None
                    return
                wait = self.idle_s if self._in_flight else self._last_end + self.idle_s - time.monotonic()
                if wait <= 0:
                    # The memory goes back, but the traffic is still remembered as large: the
                    # next large run is the stream resuming (a batch job between files, a
                    # client between bursts) and keeps what it takes, to be handed back in
                    # turn once idle. Forgetting it made that run shrink when it ended, and
                    # the run after it fault the whole working set in again.
                    self._held = False
                    self._watcher = None
                    break
            time.sleep(wait)
        self._shrink_idle()
