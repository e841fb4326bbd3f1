"""Writing result columns: one part file per chunk, and the parts joined into the output.

JSONL rows are JSON objects with the output columns in order (non-ASCII characters
escaped, so every output line is one line for any reader). Parquet parts are tables with
the output schema; joining them makes one row group per part and gives ``id`` one type
(see :func:`bertrt.batch.arrow.id_array`).

Example::

    write_part(Path("out.jsonl.partial/000000000001-000001024.jsonl"), columns, job)
    join_parts(parts, Path("out.jsonl.tmp"), job)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from bertrt.batch.arrow import arrow_table, require_pyarrow
from bertrt.batch.job import BatchJob, OutputFormat
from bertrt.batch.outputs import ID, Columns, output_columns


def write_part(path: Path, columns: Columns, job: BatchJob) -> None:
    """Write ``columns`` (every output column) to ``path`` in ``job``'s output format, and
    flush it to disk."""
    if job.output_format is OutputFormat.PARQUET:
        import pyarrow.parquet as pq

        pq.write_table(arrow_table(columns, job.task), path)
        fsync_path(path)
        return
    names = [column.name for column in output_columns(job.task)]
    with path.open("w", encoding="utf-8") as handle:
        for values in zip(*(columns[name] for name in names), strict=True):
            handle.write(json.dumps(dict(zip(names, values, strict=True)), allow_nan=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def join_parts(parts: Sequence[Path], dest: Path, job: BatchJob) -> None:
    """Write the rows of ``parts``, in order, to ``dest`` (one part in memory at a time),
    and flush it to disk."""
    if job.output_format is OutputFormat.PARQUET:
        _join_parquet(parts, dest, job)
    else:
        with dest.open("wb") as out:
            for part in parts:
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out)
    fsync_path(dest)


def _join_parquet(parts: Sequence[Path], dest: Path, job: BatchJob) -> None:
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    if not parts:  # an empty input: the schema and no rows
        pq.write_table(arrow_table({c.name: [] for c in output_columns(job.task)}, job.task), dest)
        return
    schema = pq.read_schema(parts[0])
    id_types = {pq.read_schema(part).field(ID).type for part in parts}
    id_type = pa.int64() if id_types == {pa.int64()} else pa.string()
    schema = schema.set(schema.get_field_index(ID), pa.field(ID, id_type))
    with pq.ParquetWriter(dest, schema) as writer:
        for part in parts:
            table = pq.read_table(part)
            index = table.schema.get_field_index(ID)
            writer.write_table(table.set_column(index, ID, table.column(ID).cast(id_type)))


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file, or a folder after a rename in it) to disk, so it survives a
    power cut, not only a killed process."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
