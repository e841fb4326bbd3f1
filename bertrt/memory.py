"""Giving freed memory back to the operating system, so resident memory follows the load.

A served BERT allocates its largest buffers per request (the attention scores of a batch
grow with batch x sequence²: tens to hundreds of MB). Two allocators keep such blocks
after they are freed, so a process's resident memory only ever climbs to its worst request
and, with fragmentation, past it:

* ONNX Runtime's CPU memory arena reserves regions in power-of-two steps and never
  returns them. It is also what makes a run fast: tensors freed by one node are reused by
  the next instead of being mapped afresh. bertrt keeps it for the run and hands its free
  regions back when the run ends (``RuntimeOptions(cpu_arena="shrink")``, the default,
  through the run option ``memory.enable_memory_arena_shrinkage``); ``"keep"`` keeps them,
  ``"off"`` runs without an arena;
* glibc's ``malloc`` serves large blocks with ``mmap`` (returned on ``free``) only below a
  threshold that it *raises* every time such a block is freed, up to 32 MB; past the first
  large request, blocks come from the heap, which fragments and is rarely trimmed.
  :func:`pin_mmap_threshold` fixes the threshold at 128 KiB (glibc's initial value), which
  also stops that adjustment.

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
