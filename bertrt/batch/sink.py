"""Where results go, whichever engine made them: numbered, tallied, cut into chunks and
committed to the job's folder.

Engines hand over result columns in input order (every column but ``row``). The sink
gives each row its number, and its id when the job has no id column, counts bad rows
(stopping the job at the first one under ``strict``), commits a part every
``job.chunk_rows`` rows and reports progress.

Example::

    sink = ResultSink(folder, total_rows=10_000, progress=print)
    sink.add(predict(rows))
    report = sink.close()             # joins the parts into the output
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bertrt.batch.outputs import ERROR, ID, ROW, Columns
from bertrt.batch.state import JobFolder
from bertrt.errors import BadRowError, InputError

# Bad rows a report keeps by number (every one is in the output's error column).
KEPT_BAD_ROWS = 20
Progress = Callable[[int, int], None]  # (rows done, rows in the input)


@dataclass
class BatchReport:
    """What a job did: ``rows`` in the output, of which ``resumed_rows`` were written by an
    interrupted run, ``bad_rows`` errors (the first ones by row number in ``first_bad``),
    ``seconds`` spent by this run."""

    output: Path
    engine: str
    rows: int = 0
    resumed_rows: int = 0
    bad_rows: int = 0
    first_bad: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        """Rows this run processed per second."""
        return (self.rows - self.resumed_rows) / self.seconds if self.seconds > 0 else 0.0


class ResultSink:
    """Numbers, tallies and commits results for ``folder``'s job (see the module docstring)."""

    def __init__(self, folder: JobFolder, total_rows: int, engine: str, progress: Progress | None = None) -> None:
        self.folder = folder
        self.job = folder.job
        self.total_rows = total_rows
        self.progress = progress
        self.report = BatchReport(folder.job.output, engine, folder.done_rows, folder.done_rows)
        self._pending: Columns = {}
        self._started = time.perf_counter()
        if progress:
            progress(self.report.rows, total_rows)

    @property
    def next_row(self) -> int:
        """The number of the next row to arrive."""
        return self.report.rows + 1

    def add(self, columns: Columns) -> None:
        """Take the results of the next rows (every output column but ``row``)."""
        count = len(columns[ERROR])
        first = self.next_row
        rows = list(range(first, first + count))
        if self.job.id_column is None:
            columns[ID] = rows
        for row, error in zip(rows, columns[ERROR], strict=True):
            if error is not None:
                self._bad(row, error)
        self.report.rows += count
        for name, values in {ROW: rows, **columns}.items():
            self._pending.setdefault(name, []).extend(values)
        while len(self._pending.get(ROW, ())) >= self.job.chunk_rows:
            self._commit(self.job.chunk_rows)
        if self.progress:
            self.progress(self.report.rows, self.total_rows)

    def close(self) -> BatchReport:
        """Commit the last rows, write the output, and report; an InputError instead when the
        rows that arrived are not one per input row (then the output cannot match the input)."""
        if self.report.rows != self.total_rows:
            raise InputError(
                f"The job produced {self.report.rows:,} rows for the {self.total_rows:,} rows of "
                f"{self.job.input.name} (did the file change while the job ran?); nothing was written."
            )
        self._commit(len(self._pending.get(ROW, ())))
        self.folder.finish()
        self.report.seconds = time.perf_counter() - self._started
        return self.report

    def _bad(self, row: int, error: str) -> None:
        if self.job.strict:
            raise BadRowError(
                f"{self.job.input.name} row {row:,}: {error}; fix the row, or drop --strict to write "
                "bad rows to the output with their error."
            )
        self.report.bad_rows += 1
        if len(self.report.first_bad) < KEPT_BAD_ROWS:
            self.report.first_bad.append((row, error))

    def _commit(self, count: int) -> None:
        if count == 0:
            return
        chunk = {name: values[:count] for name, values in self._pending.items()}
        self._pending = {name: values[count:] for name, values in self._pending.items()}
        self.folder.commit(chunk)
