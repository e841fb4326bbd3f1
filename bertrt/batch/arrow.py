"""Arrow for batch jobs: the pyarrow import, and result columns as an Arrow table.

pyarrow (the ``parquet`` extra; Ray Data brings it too) is imported only when a job reads
or writes Parquet or runs on Ray; JSONL, CSV and text jobs never need it.
"""

from __future__ import annotations

from typing import Any

from bertrt.batch.outputs import ID, Columns, output_columns
from bertrt.errors import ConfigError
from bertrt.types import Task


def require_pyarrow() -> Any:
    """The ``pyarrow`` module, or a ConfigError saying how to install it."""
    try:
        import pyarrow
    except ImportError:
        raise ConfigError("Parquet files need pyarrow; pip install 'bertrt[parquet]'.") from None
    return pyarrow


def arrow_types(pa: Any) -> dict[str, Any]:
    """Arrow types by output column kind (``id`` is decided from the ids, see :func:`id_array`)."""
    return {
        "int": pa.int64(),
        "float": pa.float64(),
        "str": pa.string(),
        "bool": pa.bool_(),
        "vector": pa.list_(pa.float32()),
    }


def arrow_table(columns: Columns, task: Task) -> Any:
    """``columns`` (any of ``task``'s output columns, in any order) as a ``pyarrow.Table``
    with the output schema's column order and types."""
    pa = require_pyarrow()
    types = arrow_types(pa)
    arrays, names = [], []
    for column in output_columns(task):
        if column.name not in columns:
            continue
        values = columns[column.name]
        arrays.append(id_array(pa, values) if column.name == ID else pa.array(values, type=types[column.kind]))
        names.append(column.name)
    return pa.Table.from_arrays(arrays, names=names)


def id_array(pa: Any, ids: list[Any]) -> Any:
    """Ids as int64 when they are all integers (or none), else as strings (an integer id becomes its
    decimal text): a Parquet column holds one type."""
    if all(i is None or isinstance(i, int) for i in ids):
        return pa.array(ids, type=pa.int64())
    return pa.array([None if i is None else str(i) for i in ids], type=pa.string())
