"""Running a chunk of rows through the bundle's runner for the job's task.

The runner gets every good row of the chunk in one call, so it groups them by length as
it does any call. A row the runner refuses (an InputError: a question too long for the
model window, a text over the length limit) must not sink its chunk: the call is then
repeated row by row, and each refused row gets the runner's message as its error.

Example::

    predict = Predictor(job)
    columns = predict(rows)          # {"id": [...], "error": [...], "label": [...], ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bertrt.batch.job import BatchJob
from bertrt.batch.outputs import ERROR, ID, TASK_OUTPUTS, Columns, Fields
from bertrt.batch.rows import Row
from bertrt.bundle import load
from bertrt.errors import InputError
from bertrt.options import RuntimeOptions


class Predictor:
    """The bundle's runner for ``job.task``, loaded once, turning rows into result columns."""

    def __init__(self, job: BatchJob, options: RuntimeOptions | None = None) -> None:
        self.job = job
        self.output = TASK_OUTPUTS[job.task]
        self.runner = load(job.models, device=job.device, precision=job.precision, options=options).runner(job.task)

    def __call__(self, rows: Sequence[Row]) -> Columns:
        """One value per row in every column but ``row``: ``id``, ``error`` and the task's
        columns (None where the row has an error)."""
        good = [index for index, row in enumerate(rows) if row.error is None]
        results = self._run([rows[index].fields for index in good])
        outcomes: list[dict[str, Any] | str | None] = [row.error for row in rows]
        for index, result in zip(good, results, strict=True):
            outcomes[index] = result
        columns: Columns = {ID: [row.id for row in rows], ERROR: []}
        names = [column.name for column in self.output.columns]
        for name in names:
            columns[name] = []
        for outcome in outcomes:
            values = outcome if isinstance(outcome, dict) else {}
            columns[ERROR].append(outcome if isinstance(outcome, str) else None)
            for name in names:
                columns[name].append(values.get(name))
        return columns

    def _run(self, fields: Sequence[Fields]) -> list[dict[str, Any] | str]:
        """The results of ``fields``, or for a row the runner refuses, its message."""
        if not fields:
            return []
        try:
            return list(self.output.run(self.runner, fields, self.job))
        except InputError as exc:
            if len(fields) == 1:
                return [str(exc)]
        return [result for one in fields for result in self._run([one])]
