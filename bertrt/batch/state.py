"""The on-disk state of a job, designed so that a kill at any instant loses at most the
chunk in flight, and a rerun with ``--resume`` writes exactly one row per input row.

While a job runs, its output's folder holds ``OUTPUT.partial/``:

* ``job.json``: the job's :meth:`~bertrt.batch.job.BatchJob.fingerprint`, written once
  (to a temporary name, then renamed);
* one part file per finished chunk, named by the rows it holds
  (``000000000001-000000001024.jsonl``). A part is written under a ``.tmp`` name, flushed
  to disk and then renamed: a part that exists is complete, and a chunk is either wholly
  there or not at all.

A resume keeps the parts that run on from row 1 without a gap, deletes anything else
(a ``.tmp`` left by the kill), and continues from the next row. When every row is done
the parts are joined into ``OUTPUT.tmp``, flushed and renamed to ``OUTPUT`` (so the output
appears whole or not at all), and the partial folder is renamed away and deleted. A kill
between those steps leaves a complete set of parts: the resume joins them again.

Example::

    folder = JobFolder.open(job, resume=True)
    folder.done_rows                      # rows already written by an interrupted run
    folder.commit(columns)                # the next chunk's columns, with their row numbers
    folder.finish()                       # join, rename, clean up
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from bertrt.batch.job import BatchJob
from bertrt.batch.outputs import ROW, Columns
from bertrt.batch.writers import fsync_path, join_parts, write_part
from bertrt.errors import ConfigError

JOB_FILE = "job.json"
_PART = re.compile(r"^(\d{12})-(\d{12})\.(jsonl|parquet)$")


class JobFolder:
    """The partial folder of ``job``'s output; create it with :meth:`open`."""

    def __init__(self, job: BatchJob, parts: list[Path], done_rows: int) -> None:
        self.job = job
        self.path = partial_path(job.output)
        self.parts = parts
        self.done_rows = done_rows

    @classmethod
    def open(cls, job: BatchJob, *, resume: bool = False, overwrite: bool = False) -> JobFolder:
        """The job's partial folder: continued (``resume``), or new.

        A new job refuses to replace an existing output unless ``overwrite``, and to
        discard an interrupted run's folder unless ``overwrite`` (``resume`` continues it).
        A resumed job must have the interrupted run's fingerprint.
        """
        folder = partial_path(job.output)
        _remove(_trash_path(job.output))
        _remove(_output_tmp(job.output))
        started = (folder / JOB_FILE).is_file()
        if started and not resume and not overwrite:
            raise ConfigError(
                f"{folder} holds an interrupted run of this output; pass --resume to continue it, "
                "or --overwrite to start over."
            )
        if not started and job.output.exists() and not overwrite:
            if resume:
                return cls(job, [], -1)  # done already: see finished
            raise ConfigError(f"{job.output} already exists; pass --overwrite to replace it, or choose another --out.")
        if started and resume:
            _check_fingerprint(folder, job)
            parts, done = _contiguous_parts(folder)
            return cls(job, parts, done)
        _remove(folder)
        folder.mkdir(parents=True)
        _write_atomically(folder / JOB_FILE, json.dumps(job.fingerprint(), indent=2))
        return cls(job, [], 0)

    @property
    def finished(self) -> bool:
        """True when a resumed job had already written its output (there is nothing to do)."""
        return self.done_rows < 0

    def commit(self, columns: Columns) -> None:
        """Write one chunk's ``columns`` (every output column, rows in order) as a part."""
        rows = columns[ROW]
        if not rows:
            return
        if rows[0] != self.done_rows + 1:
            raise ValueError(f"chunk starts at row {rows[0]}, expected {self.done_rows + 1}")
        name = f"{rows[0]:012d}-{rows[-1]:012d}.{self.job.output_format.value}"
        tmp = self.path / (name + ".tmp")
        write_part(tmp, columns, self.job)
        os.replace(tmp, self.path / name)
        fsync_path(self.path)
        self.parts.append(self.path / name)
        self.done_rows = rows[-1]

    def finish(self) -> Path:
        """Join the parts into the output (atomically) and delete the partial folder."""
        output = self.job.output
        if self.finished:
            return output
        tmp = _output_tmp(output)
        join_parts(self.parts, tmp, self.job)
        os.replace(tmp, output)
        fsync_path(output.parent)
        self.discard()
        return output

    def discard(self) -> None:
        """Delete the partial folder and any temporary output (a failed job leaves nothing)."""
        trash = _trash_path(self.job.output)
        if self.path.exists():
            # Renamed first, so a kill during the delete never leaves a half-deleted folder
            # that a resume would take for an interrupted run.
            os.replace(self.path, trash)
        _remove(trash)
        _remove(_output_tmp(self.job.output))


def partial_path(output: Path) -> Path:
    """The folder holding ``output``'s parts while its job runs."""
    return output.with_name(output.name + ".partial")


def _output_tmp(output: Path) -> Path:
    return output.with_name(output.name + ".tmp")


def _trash_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial.trash")


def _check_fingerprint(folder: Path, job: BatchJob) -> None:
    try:
        before: dict[str, Any] = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"{folder / JOB_FILE} is unreadable; pass --overwrite to start the job over.") from None
    now = job.fingerprint()
    for key, value in now.items():
        if before.get(key) != value:
            what = "changed since" if key.startswith(("input_", "bundle_")) else "differs from"
            raise ConfigError(
                f"Cannot resume: {key} ({value!r}) {what} the interrupted run's ({before.get(key)!r}); "
                "rerun with the same input and options, or pass --overwrite to start over."
            )


def _contiguous_parts(folder: Path) -> tuple[list[Path], int]:
    """The parts that run on from row 1 without a gap, and the last row they hold; every
    other file of the folder (a ``.tmp`` part, a part past a gap) is deleted."""
    found: dict[int, tuple[int, Path]] = {}
    for path in folder.iterdir():
        match = _PART.match(path.name)
        if match:
            found[int(match.group(1))] = (int(match.group(2)), path)
    keep: list[Path] = []
    done = 0
    while done + 1 in found:
        done, path = found.pop(done + 1)
        keep.append(path)
    for path in folder.iterdir():
        if path.name != JOB_FILE and path not in keep:
            _remove(path)
    return keep, done


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
