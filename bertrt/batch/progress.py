"""A one-line progress bar for batch jobs: rows done, share of the input, rows per second
and time left, redrawn in place on a terminal (at most five times a second).

Example::

    bar = ProgressBar("classify")
    bar(512, 10_000)      # classify   512/10,000 rows   5%  213 rows/s  0:44 left
    bar.close()
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


class ProgressBar:
    """Draws ``(done, total)`` updates on ``stream`` when it is a terminal, else nothing
    (a log file gets the job's summary instead)."""

    def __init__(self, label: str, stream: TextIO | None = None, min_interval: float = 0.2) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.min_interval = min_interval
        self._start = time.perf_counter()
        self._first: int | None = None
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        """Record that ``done`` of ``total`` rows are written."""
        now = time.perf_counter()
        if self._first is None:
            # Rows a resumed job found written do not count towards its speed.
            self._first, self._start = done, now
            return
        if not self.enabled or (now - self._last_draw < self.min_interval and done < total):
            return
        self._last_draw = now
        self.stream.write("\r" + self.line(done, total, now - self._start))
        self.stream.flush()
        self._drawn = True

    def line(self, done: int, total: int, seconds: float) -> str:
        """The bar's text after ``seconds`` with ``done`` of ``total`` rows written."""
        share = done / total if total else 1.0
        filled = round(share * BAR_WIDTH)
        rate = (done - (self._first or 0)) / seconds if seconds > 0 else 0.0
        left = (total - done) / rate if rate > 0 else None
        eta = f"{int(left) // 60}:{int(left) % 60:02d} left" if left is not None else ""
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        return f"{self.label} [{bar}] {done:,}/{total:,} rows {share:4.0%}  {rate:,.0f} rows/s  {eta}".rstrip()

    def close(self) -> None:
        """End the bar's line, so what follows starts on a new one."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
