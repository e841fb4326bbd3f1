"""Input rows as the model sees them: raw lines or records in, a text (or a question and a
context) and an id out, or the reason the row cannot be run.

Both engines parse rows with these functions (the local engine in its reader loop, Ray
in each actor), so a bad row gets the same message whichever engine runs the job.
A ``.txt`` or ``.jsonl`` input arrives as lines; ``.csv`` and ``.parquet`` as records
(column name -> value).

Example::

    rows_from_lines(['{"text": "I love Paris", "id": 7}', '{"text": ""}'], job)
    # [Row(id=7, fields=('I love Paris',), error=None),
    #  Row(id=None, fields=(), error="'text' is empty")]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bertrt.batch.job import BatchJob, InputFormat

# A byte-order mark is not text; a file saved by some Windows editors starts with one.
BOM = "\ufeff"
_MISSING = object()


@dataclass(frozen=True)
class Row:
    """One input row: its ``id`` (None when the job has no id column), its text ``fields``
    (the text, or the question and the context), or the ``error`` that keeps it from the model."""

    id: object
    fields: tuple[str, ...]
    error: str | None = None


def rows_from_lines(lines: Sequence[str], job: BatchJob) -> list[Row]:
    """Rows of a ``.txt`` (a text per line) or ``.jsonl`` (a JSON object per line) input."""
    if job.input_format is InputFormat.TXT:
        return [_text_row(line.removeprefix(BOM)) for line in lines]
    return [_json_row(line.removeprefix(BOM), job) for line in lines]


def rows_from_records(records: Sequence[Mapping[str, object]], job: BatchJob) -> list[Row]:
    """Rows of a ``.csv`` or ``.parquet`` input, read as column name -> value records."""
    return [row_from_record(record, job) for record in records]


def row_from_record(record: Mapping[str, object], job: BatchJob) -> Row:
    """The row in ``record``: its id and text fields, or the first thing wrong with them."""
    row_id: object = None
    if job.id_column is not None:
        row_id, problem = _id(record.get(job.id_column, _MISSING), job.id_column)
        if problem:
            return Row(None, (), problem)
    fields = []
    for name in job.text_fields:
        value = record.get(name, _MISSING)
        problem = _text_problem(value, name)
        if problem:
            return Row(row_id, (), problem)
        fields.append(str(value))
    return Row(row_id, tuple(fields))


def _text_row(line: str) -> Row:
    return Row(None, (line,)) if line.strip() else Row(None, (), "the line is empty")


def _json_row(line: str, job: BatchJob) -> Row:
    if not line.strip():
        return Row(None, (), "the line is empty")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return Row(None, (), f"the line is not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(record, dict):
        return Row(None, (), f"the line is {_json_type(record)}, not a JSON object")
    return row_from_record(record, job)


def _id(value: object, name: str) -> tuple[object, str | None]:
    """The id and None, or None and what is wrong with it (ids are strings or integers)."""
    if value is _MISSING:
        return None, f"missing {name!r} field"
    if value is None or value == "":
        return None, f"{name!r} is empty"
    if isinstance(value, float):
        return None, f"{name!r} is {value!r}; ids must be strings or integers"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, f"{name!r} is {_json_type(value)}; ids must be strings or integers"
    return value, None


def _text_problem(value: object, name: str) -> str | None:
    if value is _MISSING:
        return f"missing {name!r} field"
    if value is None:
        return f"{name!r} is null"
    if not isinstance(value, str):
        return f"{name!r} is {_json_type(value)}, not a string"
    if not value.strip():
        return f"{name!r} is empty"
    return None


def _json_type(value: object) -> str:
    """How JSON (or, for other types, Python) names the type of ``value``, with an article."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"
