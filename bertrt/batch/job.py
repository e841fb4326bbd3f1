"""What a batch job is: its task, input and output files, columns and model options.

A :class:`BatchJob` is fixed when the job starts. Everything that shapes the output rows
is in it, so an interrupted job can check that a rerun with ``--resume`` asks for the same
thing (:meth:`BatchJob.fingerprint`).

Example::

    job = BatchJob(Task.CLASSIFY, Path("reviews.csv"), Path("labels.parquet"), id_column="review_id")
    job.input_format, job.text_fields        # (InputFormat.CSV, ('text',))
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from bertrt.errors import ConfigError
from bertrt.limits import check_positive
from bertrt.options import RuntimeOptions, coerce_enum
from bertrt.types import Device, Pooling, PrecisionChoice, Task

# Rows per chunk: the unit of length grouping, of memory and of what a resume may redo.
DEFAULT_CHUNK_ROWS = 1024


class InputFormat(str, Enum):
    """Input files a batch job reads, by suffix."""

    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"
    TXT = "txt"


class OutputFormat(str, Enum):
    """Output files a batch job writes, by suffix."""

    JSONL = "jsonl"
    PARQUET = "parquet"


@dataclass(frozen=True)
class BatchJob:
    """One file-to-file job: ``task`` over every row of ``input``, one row each in ``output``.

    ``text_column`` names the text (``question_column`` and ``context_column`` for QA) in a
    JSONL, CSV or Parquet input; a ``.txt`` input holds one text per line. ``id_column``
    names the column whose value each output row carries as its ``id`` (without it, the
    id is the row number). ``chunk_rows`` rows are read, run and written at a time.
    Paths are made absolute, so Ray workers and a resumed run see the same files.
    """

    task: Task
    input: Path
    output: Path
    models: Path = Path("models/minilm")
    precision: PrecisionChoice = PrecisionChoice.FP32
    device: Device = Device.AUTO
    text_column: str = "text"
    id_column: str | None = None
    question_column: str = "question"
    context_column: str = "context"
    pooling: Pooling = Pooling.MEAN
    normalize: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    strict: bool = False
    input_format: InputFormat = field(init=False)
    output_format: OutputFormat = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalize the fields once, here
        set_(self, "task", coerce_enum(Task, self.task, "task"))
        set_(self, "precision", coerce_enum(PrecisionChoice, self.precision, "precision"))
        set_(self, "device", coerce_enum(Device, self.device, "device"))
        set_(self, "pooling", coerce_enum(Pooling, self.pooling, "pooling"))
        for name in ("input", "output", "models"):
            set_(self, name, Path(getattr(self, name)).expanduser().absolute())
        set_(self, "input_format", _format(InputFormat, self.input, "INPUT", "read"))
        set_(self, "output_format", _format(OutputFormat, self.output, "--out", "write"))
        check_positive(self.chunk_rows, "chunk_rows")
        limit = RuntimeOptions().max_texts_per_call
        if self.chunk_rows > limit:
            raise ConfigError(
                f"chunk_rows {self.chunk_rows:,} is more than a runner takes in one call ({limit:,}); lower it."
            )
        if self.output == self.input:
            raise ConfigError(f"--out {self.output} is the input file; write the results to another file.")
        if self.input_format is InputFormat.TXT and self.task is Task.QA:
            raise ConfigError(
                "qa needs a question and a context per row, and a .txt file holds one text per line; "
                "use a .jsonl, .csv or .parquet file with question and context columns."
            )
        if self.input_format is InputFormat.TXT and self.id_column is not None:
            raise ConfigError(
                "A .txt input has no columns, so --id-column cannot apply; drop it (rows get their line number)."
            )

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The input columns the model reads: the text, or the question and the context."""
        if self.task is Task.QA:
            return (self.question_column, self.context_column)
        return (self.text_column,)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Every input column the job reads (the text fields, then the id column if any)."""
        return self.text_fields + ((self.id_column,) if self.id_column else ())

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the interrupted one: the input file as it was,
        the bundle as it was, and every option that shapes the output rows."""
        stat = self.input.stat()
        return {
            "task": self.task.value,
            "input": str(self.input),
            "input_bytes": stat.st_size,
            "input_mtime_ns": stat.st_mtime_ns,
            "output": str(self.output),
            "models": str(self.models),
            "bundle_manifest_sha256": _sha256(self.models / "manifest.json"),
            "precision": self.precision.value,
            "device": self.device.value,
            "columns": list(self.input_columns),
            "id_column": self.id_column,
            "pooling": self.pooling.value,
            "normalize": self.normalize,
            "chunk_rows": self.chunk_rows,
            "strict": self.strict,
        }


def _format(kind: type[InputFormat] | type[OutputFormat], path: Path, flag: str, verb: str) -> Any:
    """The format ``path``'s suffix names, or a ConfigError listing the suffixes bertrt can ``verb``."""
    try:
        return kind(path.suffix.lower().lstrip("."))
    except ValueError:
        names = [f".{member.value}" for member in kind]
        valid = ", ".join(names[:-1]) + f" or {names[-1]}"
        raise ConfigError(f"{flag} {path.name} is not a file bertrt batch can {verb}; name a {valid} file.") from None


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
