"""A batch job run that dies like kill -9 just before its N-th rename or fsync.

Run as ``python batch_crash_child.py INPUT OUTPUT MODELS CHUNK_ROWS N`` (N = 0: never dies) by
the resume tests: the job resumes what is on disk, uses the row-only model stand-in, and the
process exits with 137 at the chosen step, leaving the disk as a crash there would."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from batch_files import FakePredictor

import bertrt.batch.local
from bertrt.batch import BatchJob, run_local
from bertrt.types import Task

KILLED = 137


def dies_on_step(real: Any, crash_at: int, calls: list[int]) -> Any:
    """``real``, counting its calls (shared across the wrapped functions) and exiting at once,
    with no clean-up, on the ``crash_at``-th."""

    def step(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] == crash_at:
            os._exit(KILLED)
        return real(*args)

    return step


def main(source: str, output: str, models: str, chunk_rows: str, crash_at: str) -> None:
    bertrt.batch.local.Predictor = FakePredictor  # type: ignore[misc, assignment]
    calls = [0]
    os.replace = dies_on_step(os.replace, int(crash_at), calls)  # type: ignore[assignment]
    os.fsync = dies_on_step(os.fsync, int(crash_at), calls)  # type: ignore[assignment]
    job = BatchJob(
        Task.CLASSIFY, Path(source), Path(output), models=Path(models), id_column="id", chunk_rows=int(chunk_rows)
    )
    run_local(job, resume=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
