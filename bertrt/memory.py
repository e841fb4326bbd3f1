"""Giving freed memory back to the operating system, so resident memory follows the load.

A served BERT allocates its largest buffers per request (the attention scores of a batch
grow with batch x sequence²: tens to hundreds of MB). Two allocators keep such blocks
after they are freed, so a process's resident memory only ever climbs to its worst request
and, with fragmentation, past it:

* ONNX Runtime's CPU memory arena reserves regions in power-of-two steps and never
  returns them; bertrt turns it off unless ``RuntimeOptions(cpu_memory_arena=True)``;
* glibc's ``malloc`` serves large blocks with ``mmap`` (returned on ``free``) only below a
  threshold that it *raises* every time such a block is freed, up to 32 MB; past the first
  large request, blocks come from the heap, which fragments and is rarely trimmed.
  :func:`pin_mmap_threshold` fixes the threshold at 128 KiB (glibc's initial value), which
  also stops that adjustment.

Measured with the request mix of ``python -m benchmarks.soak`` on the MiniLM bundle (2,500
requests, one intra-op thread): with both, RSS stays within 387-390 MB; with the arena and
glibc's defaults it climbs from 656 to 731 MB in steps; latency is the same (276 s against
290 s for the whole run).
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
