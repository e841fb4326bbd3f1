"""Reading an input file in chunks of rows, without holding the file in memory.

``.txt`` and ``.jsonl`` files are read line by line, ``.csv`` record by record with the
``csv`` module, ``.parquet`` in record batches with pyarrow. Lines are split as Python's
``str.splitlines`` splits them (and so Ray Data's ``read_text``): besides ``\\n`` and
``\\r``, the characters U+0085, U+2028 and U+2029 end a line, so a JSON line must escape
them (``json.dumps`` does by default). Every line is a row, an empty one too (it is
reported as a bad row), so a row's number is its line number. In a CSV file, blank lines
are skipped and row 1 is the first record after the header.

A file that cannot be read as its suffix says (a missing column, a CSV record with the
wrong number of fields, bytes that are not UTF-8) stops the job with an InputError naming
the file; a row that can be read but not run becomes an error row (see :mod:`rows`).

Example::

    check_input(job)
    for rows in read_chunks(job, skip=0):     # lists of job.chunk_rows rows (the last may be shorter)
        ...
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from bertrt.batch.arrow import require_pyarrow
from bertrt.batch.job import BatchJob, InputFormat
from bertrt.batch.rows import Row, rows_from_lines, rows_from_records
from bertrt.errors import InputError
from bertrt.types import Task

Raw = Any  # a line (str) of a .txt or .jsonl file, or a record (dict) of a .csv or .parquet file


def check_input(job: BatchJob) -> None:
    """InputError unless ``job.input`` is a readable file with the columns the job needs."""
    path = job.input
    if not path.exists():
        raise InputError(f"{path} does not exist; pass the path of the file to process.")
    if not path.is_file():
        raise InputError(f"{path} is not a file; pass a .jsonl, .csv, .parquet or .txt file.")
    if job.input_format is InputFormat.CSV:
        _csv_columns(job)
    elif job.input_format is InputFormat.PARQUET:
        _parquet_file(job)


def count_rows(job: BatchJob) -> int:
    """How many rows ``job.input`` holds (a quick pass that runs no model)."""
    if job.input_format is InputFormat.PARQUET:
        return int(_parquet_file(job).metadata.num_rows)
    return sum(1 for _ in raw_rows(job))


def read_chunks(job: BatchJob, skip: int = 0) -> Iterator[list[Row]]:
    """The rows of ``job.input`` after the first ``skip``, ``job.chunk_rows`` at a time."""
    raws = islice(raw_rows(job), skip, None)
    while chunk := list(islice(raws, job.chunk_rows)):
        yield parse_raw(job, chunk)


def parse_raw(job: BatchJob, raws: list[Raw]) -> list[Row]:
    """Rows from raw lines or records of ``job``'s input format."""
    if job.input_format in (InputFormat.TXT, InputFormat.JSONL):
        return rows_from_lines(raws, job)
    return rows_from_records(raws, job)


def raw_rows(job: BatchJob) -> Iterator[Raw]:
    """Every raw row of ``job.input``, in order: lines or records."""
    if job.input_format is InputFormat.CSV:
        return _csv_records(job)
    if job.input_format is InputFormat.PARQUET:
        return _parquet_records(job)
    return _lines(job.input)


def _lines(path: Path) -> Iterator[str]:
    # Each \n-terminated line is decoded on its own and cut by splitlines, exactly where
    # splitting the whole file would cut it, without reading the whole file.
    with path.open("rb") as handle:
        for number, physical in enumerate(handle, start=1):
            try:
                text = physical.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(
                    f"{path.name} is not valid UTF-8 (line {number:,}); convert the file to UTF-8."
                ) from None
            yield from text.splitlines()


def _csv_columns(job: BatchJob) -> list[str]:
    with job.input.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise InputError(f"{job.input.name} is empty; a CSV input needs a header row naming its columns.")
    _require_columns(job, header)
    return header


def _csv_records(job: BatchJob) -> Iterator[dict[str, str]]:
    header = _csv_columns(job)
    wanted = {name: header.index(name) for name in job.input_columns}
    # The csv module refuses fields over 128 KiB by default; a long document is one field.
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))
    with job.input.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            next(reader)
            for record in reader:
                if not record:
                    continue  # a blank line (Arrow's CSV reader skips them too)
                if len(record) != len(header):
                    raise InputError(
                        f"{job.input.name} line {reader.line_num:,} has {len(record)} fields but the header has "
                        f"{len(header)}; fix that line (quote fields that hold commas or line breaks)."
                    )
                yield {name: record[index] for name, index in wanted.items()}
        except csv.Error as exc:
            raise InputError(
                f"{job.input.name} is not a readable CSV file (line {reader.line_num:,}: {exc}); fix the file."
            ) from None
        except UnicodeDecodeError:
            raise InputError(
                f"{job.input.name} is not valid UTF-8 (near line {reader.line_num:,}); convert the file to UTF-8."
            ) from None


def _parquet_file(job: BatchJob) -> Any:
    """The opened ``pyarrow.parquet.ParquetFile``, its columns checked."""
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(job.input)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"{job.input.name} is not a Parquet file ({exc}); pass a .parquet file written by pyarrow, pandas or Spark."
        ) from None
    schema = parquet.schema_arrow
    _require_columns(job, schema.names)
    for name in job.text_fields:
        kind = schema.field(name).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(f"Column {name!r} of {job.input.name} holds {kind}, not strings; name a string column.")
    if job.id_column is not None:
        kind = schema.field(job.id_column).type
        if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(
                f"Id column {job.id_column!r} of {job.input.name} holds {kind}; ids must be strings or integers."
            )
    return parquet


def _parquet_records(job: BatchJob) -> Iterator[dict[str, Any]]:
    parquet = _parquet_file(job)
    for batch in parquet.iter_batches(batch_size=job.chunk_rows, columns=list(job.input_columns)):
        yield from batch.to_pylist()


def _require_columns(job: BatchJob, present: list[str]) -> None:
    missing = [name for name in job.input_columns if name not in present]
    if not missing:
        return
    name = missing[0]
    flag = "--id-column" if name == job.id_column else "--text-column"
    if job.task is Task.QA and name != job.id_column:
        flag = "--question-column" if name == job.question_column else "--context-column"
    shown = ", ".join(present[:12]) + (", ..." if len(present) > 12 else "")
    raise InputError(f"{job.input.name} has no column {name!r} (it has: {shown}); pass {flag} naming one of them.")
