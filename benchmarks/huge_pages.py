"""Move the memory a CPU session's build mapped (its weights) onto 2 MiB pages: an experiment.

A forward on few tokens streams every weight once: a MiniLM fp32 forward of one short text
reads about 90 MB of packed weights in 3 ms, 22,000 translations on 4 KiB pages against
about 50 on 2 MiB ones. ONNX Runtime allocates the weights with ``malloc``, which maps them
on 4 KiB pages where transparent huge pages run in ``madvise`` mode (most machines), so the
question is whether moving them afterwards buys a single request anything.

:func:`new_memory` notes the process's anonymous memory before a session is built, and
:func:`back_with_huge_pages` then asks the kernel (``madvise(MADV_COLLAPSE)``, Linux 6.1+)
to move every 2 MiB-aligned block the build added onto one huge page. Contents and
addresses stay the same, so the session's outputs are unchanged; only blocks whose every
4 KiB page is resident move, so resident memory does not grow.

``python -m bertrt.bench.session_options --variant huge-pages`` times such sessions against
plain ones. On a 2-core Zen 4 KVM guest it moved 90-98 of 96-104 MiB per MiniLM
classifier and took 0.6-1.0 s per session; the moved sessions' forwards landed inside the
spread of identical plain sessions on every shape (benchmarks/README.md). The runtime
therefore does not do it.

Where the kernel cannot (not Linux, older than 6.1, transparent huge pages compiled out or
set to ``never``), nothing changes and :class:`HugePages` says why.

Example::

    with new_memory() as added:
        session = ort.InferenceSession("model.onnx")
    report = back_with_huge_pages(added.ranges())
    report.backed_bytes, report.reason
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

HUGE_PAGE_BYTES = 2 << 20
_MADV_COLLAPSE = 25  # linux/mman.h, since Linux 6.1
_MAPS = "/proc/self/maps"

Range = tuple[int, int]  # [start, end) in bytes


@dataclass(frozen=True)
class HugePages:
    """What :func:`back_with_huge_pages` did: ``backed_bytes`` now on 2 MiB pages out of
    ``candidate_bytes`` in whole aligned blocks; ``reason`` says why nothing was moved
    (None when it ran)."""

    backed_bytes: int = 0
    candidate_bytes: int = 0
    reason: str | None = None

    def describe(self) -> str:
        """One line for the benchmark's notes.

        >>> HugePages(100 << 20, 104 << 20).describe()
        '100 MiB of 104 MiB on 2 MiB pages'
        >>> HugePages(reason="huge pages are off").describe()
        'not used: huge pages are off'
        """
        if self.reason is not None:
            return f"not used: {self.reason}"
        return f"{self.backed_bytes >> 20} MiB of {self.candidate_bytes >> 20} MiB on 2 MiB pages"


@dataclass
class NewMemory:
    """The anonymous memory mapped before a block ran (``before``) and after (``after``)."""

    before: list[Range] = field(default_factory=list)
    after: list[Range] = field(default_factory=list)

    def ranges(self) -> list[Range]:
        """The parts of ``after`` that were not mapped in ``before``: what the block added."""
        return subtract(self.after, self.before)


@contextmanager
def new_memory() -> Iterator[NewMemory]:
    """Note this process's anonymous memory around the ``with`` block (empty off Linux).

    Memory another thread maps meanwhile is counted too; moving it to huge pages is
    harmless (only resident blocks move, with their contents). Memory unmapped during the
    block and mapped again at the same addresses is missed: it only stays where it is."""
    added = NewMemory(before=anonymous_ranges())
    yield added
    added.after = anonymous_ranges()


def anonymous_ranges(maps_text: str | None = None) -> list[Range]:
    """Private, writable, anonymous mappings of this process (``[heap]`` included), read
    from ``/proc/self/maps`` or ``maps_text``; empty where there is no such file.

    >>> anonymous_ranges("7f00-7f10 rw-p 0 00:00 0\\n7f10-7f20 r--p 0 08:01 5 /lib/x.so\\n")
    [(32512, 32528)]
    """
    if maps_text is None:
        try:
            with open(_MAPS) as maps:
                maps_text = maps.read()
        except OSError:
            return []
    ranges = []
    for line in maps_text.splitlines():
        fields = line.split()
        if len(fields) < 5 or not fields[1].startswith("rw") or fields[1][3] != "p":
            continue
        if len(fields) > 5 and fields[5] != "[heap]":
            continue  # a file, a stack, [vdso] and the like
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        ranges.append((start, end))
    return ranges


def subtract(ranges: list[Range], taken: list[Range]) -> list[Range]:
    """The parts of ``ranges`` that no range of ``taken`` covers.

    >>> subtract([(0, 100)], [(10, 20), (50, 200)])
    [(0, 10), (20, 50)]
    """
    pieces = list(ranges)
    for cut_start, cut_end in taken:
        kept = []
        for start, end in pieces:
            if cut_end <= start or cut_start >= end:
                kept.append((start, end))
                continue
            if start < cut_start:
                kept.append((start, cut_start))
            if cut_end < end:
                kept.append((cut_end, end))
        pieces = kept
    return pieces


def aligned_blocks(ranges: list[Range]) -> Iterator[int]:
    """Start addresses of the whole 2 MiB-aligned blocks inside ``ranges``.

    >>> [hex(a) for a in aligned_blocks([(0x100000, 0x600000)])]
    ['0x200000', '0x400000']
    """
    for start, end in ranges:
        first = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
        yield from range(first, end - HUGE_PAGE_BYTES + 1, HUGE_PAGE_BYTES)


def back_with_huge_pages(ranges: list[Range]) -> HugePages:
    """Move every fully resident 2 MiB-aligned block of ``ranges`` onto one huge page.

    Blocks with a page not yet resident are left alone (collapsing them would fault the
    missing pages in, growing resident memory); a block the kernel refuses (memory too
    fragmented for a free huge page, say) stays as it was."""
    reason = unavailable()
    if reason is not None:
        return HugePages(reason=reason)
    libc = _libc()
    page = os.sysconf("SC_PAGE_SIZE")
    residency = (ctypes.c_ubyte * (HUGE_PAGE_BYTES // page))()
    backed = candidates = 0
    for block in aligned_blocks(ranges):
        candidates += HUGE_PAGE_BYTES
        if libc.mincore(ctypes.c_void_p(block), HUGE_PAGE_BYTES, residency) != 0:
            continue  # unmapped since the ranges were read
        if not all(state & 1 for state in residency):
            continue
        if libc.madvise(ctypes.c_void_p(block), HUGE_PAGE_BYTES, _MADV_COLLAPSE) == 0:
            backed += HUGE_PAGE_BYTES
    return HugePages(backed, candidates)


def unavailable() -> str | None:
    """Why this process cannot back memory with transparent huge pages, or None."""
    if not sys.platform.startswith("linux"):
        return f"transparent huge pages are Linux-only (this is {sys.platform})"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as setting:
            mode = setting.read()
    except OSError:
        return "this kernel has no transparent huge pages"
    if "[never]" in mode:
        return "transparent huge pages are set to never (/sys/kernel/mm/transparent_hugepage/enabled)"
    if _kernel_version(platform.release()) < (6, 1):
        return f"this kernel ({platform.release()}) has no MADV_COLLAPSE, which came with Linux 6.1"
    return None


def _kernel_version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string; (0, 0) where it does not parse.

    >>> _kernel_version("6.18.44-fc-v1098-x86_64"), _kernel_version("5.15.0-91-generic"), _kernel_version("x")
    ((6, 18), (5, 15), (0, 0))
    """
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match[1]), int(match[2])) if match else (0, 0)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc
