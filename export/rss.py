"""Peak resident memory of each export stage, for the export's log and the manifest.

The kernel keeps one peak per process (``ru_maxrss``, what ``/usr/bin/time -v`` reports),
which only ever grows. A stage's own peak is therefore taken two ways at once: a thread
samples the resident size (``/proc/self/statm``) every few milliseconds while the stage
runs, and when the process peak grew during the stage, that new process peak is the stage's
peak exactly (sampling can miss a short spike; the kernel cannot). Off Linux, only the
process peak is read.

Example::

    peaks = StagePeaks()
    with peaks.stage("fp32 optimize"):
        optimize_fp32(...)
    peaks.mib    # {'fp32 optimize': 2817}
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SAMPLE_SECONDS = 0.005
_MIB = 1 << 20
_GIB = 1 << 30


class StagePeaks:
    """Peak resident memory per named stage, in MiB (a repeated name keeps its largest);
    ``log`` is told each stage's peak as it ends."""

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.mib: dict[str, int] = {}
        self._log = log

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Measure the peak resident memory while the body runs, under ``name``."""
        before = process_peak_bytes()
        sampler = _Sampler()
        sampler.start()
        try:
            yield
        finally:
            sampler.stop()
            after = process_peak_bytes()
            peak = after if after > before else max(sampler.peak, current_bytes())
            self.mib[name] = max(self.mib.get(name, 0), round(peak / _MIB))
            if self._log is not None:
                self._log(f"      {name}: peak memory {peak / _GIB:.1f} GB")


def process_peak_bytes() -> int:
    """The process's peak resident memory so far (what ``/usr/bin/time -v`` reports at exit)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def current_bytes() -> int:
    """The process's resident memory now (0 where /proc is absent)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _Sampler(threading.Thread):
    """Reads the resident size until stopped; keeps the largest value seen."""

    def __init__(self) -> None:
        super().__init__(name="bertrt-rss-sampler", daemon=True)
        self.peak = current_bytes()
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, current_bytes())

    def stop(self) -> None:
        self._stopped.set()
        self.join()
