"""The huge-pages experiment of the session-options benchmark: which memory moves onto
2 MiB pages, that its contents stay the same, and that resident memory does not grow."""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from bertrt.bench import huge_pages
from bertrt.bench.huge_pages import HUGE_PAGE_BYTES, HugePages, back_with_huge_pages, new_memory, subtract

REASON = huge_pages.unavailable()
needs_huge_pages = pytest.mark.skipif(REASON is not None, reason=f"no transparent huge pages here: {REASON}")
PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def region() -> Iterator[tuple[mmap.mmap, int]]:
    """8 MiB of fresh anonymous memory (three whole aligned 2 MiB blocks at least) and its address."""
    memory = mmap.mmap(-1, 8 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    yield memory, address
    memory.close()


def huge_kib(address: int) -> int:
    """AnonHugePages of the mapping that holds ``address``, in KiB."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            inside = start <= address < end
        elif inside and fields[0] == "AnonHugePages:":
            return int(fields[1])
    raise AssertionError(f"no mapping holds {address:#x}")


def resident_pages(address: int, length: int) -> int:
    libc = huge_pages._libc()  # the module's own prototypes for mincore
    states = (ctypes.c_ubyte * (length // PAGE))()
    assert libc.mincore(ctypes.c_void_p(address), length, states) == 0
    return sum(state & 1 for state in states)


def test_the_memory_a_block_maps_is_what_it_added(monkeypatch: pytest.MonkeyPatch) -> None:
    # Scripted maps, so no memory another part of the process frees or maps meanwhile enters
    # the check: one region grew at its end, one appeared, one went away.
    snapshots = iter([[(0x1000, 0x3000), (0x8000, 0x9000)], [(0x1000, 0x5000), (0x6000, 0x7000)]])
    monkeypatch.setattr(huge_pages, "anonymous_ranges", lambda: next(snapshots))
    with new_memory() as added:
        pass
    assert added.ranges() == [(0x3000, 0x5000), (0x6000, 0x7000)]


def test_the_process_maps_list_a_fresh_anonymous_mapping() -> None:
    memory = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    assert any(start <= address and address + (4 << 20) <= end for start, end in huge_pages.anonymous_ranges())
    memory.close()


def test_subtracting_ranges_keeps_only_what_no_range_covers() -> None:
    assert subtract([(0, 10), (20, 30)], [(5, 25)]) == [(0, 5), (25, 30)]
    assert subtract([(0, 10)], [(0, 10)]) == []
    assert subtract([(0, 10)], []) == [(0, 10)]


def test_anonymous_ranges_skip_files_stacks_and_read_only_memory() -> None:
    maps = "\n".join(
        [
            "1000-2000 rw-p 00000000 00:00 0",
            "2000-3000 rw-p 00000000 00:00 0 [heap]",
            "3000-4000 rw-p 00000000 00:00 0 [stack]",
            "4000-5000 r--p 00000000 00:00 0",
            "5000-6000 rw-s 00000000 00:05 7 /dev/zero (deleted)",
            "6000-7000 rw-p 00001000 08:01 42 /usr/lib/libc.so.6",
        ]
    )
    assert huge_pages.anonymous_ranges(maps) == [(0x1000, 0x2000), (0x2000, 0x3000)]


@needs_huge_pages
def test_resident_blocks_move_onto_huge_pages_with_their_contents(region: tuple[mmap.mmap, int]) -> None:
    memory, address = region
    values = np.frombuffer(memory, dtype=np.float32)
    values[:] = np.arange(values.size, dtype=np.float32)
    report = back_with_huge_pages([(address, address + len(memory))])
    assert report.reason is None
    assert report.candidate_bytes >= 3 * HUGE_PAGE_BYTES
    assert report.backed_bytes == report.candidate_bytes
    assert huge_kib(address) * 1024 >= report.backed_bytes
    np.testing.assert_array_equal(values, np.arange(values.size, dtype=np.float32))


@needs_huge_pages
def test_a_block_with_pages_not_yet_resident_stays_as_it_is(region: tuple[mmap.mmap, int]) -> None:
    memory, address = region
    half = len(memory) // 2
    np.frombuffer(memory, dtype=np.uint8)[:half] = 1  # touch the first half only
    resident_before = resident_pages(address, len(memory))
    report = back_with_huge_pages([(address, address + len(memory))])
    # Whole blocks inside the touched half move; none past it, so nothing new became resident.
    assert 0 < report.backed_bytes <= half
    assert report.backed_bytes < report.candidate_bytes
    assert resident_pages(address, len(memory)) == resident_before


def test_nothing_moves_where_the_kernel_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huge_pages.sys, "platform", "darwin")
    report = back_with_huge_pages([(0, 8 << 20)])
    assert report == HugePages(reason="transparent huge pages are Linux-only (this is darwin)")
    assert report.describe().startswith("not used: ")
