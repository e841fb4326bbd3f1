"""`bertrt batch`: a task over every row of a file, into a JSONL or Parquet file.

The command builds a :class:`~bertrt.batch.BatchJob`, runs it on the local engine or on
Ray (imported only then: the ``ray`` extra), draws a progress bar on stderr and prints a
summary (or, with ``--json``, the report as JSON) on stdout.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from bertrt.batch import BatchJob, BatchReport, run_local
from bertrt.batch.job import DEFAULT_CHUNK_ROWS
from bertrt.batch.progress import ProgressBar
from bertrt.batch.state import partial_path
from bertrt.cli import app
from bertrt.cli.common import (
    DEFAULT_MODELS,
    DeviceOption,
    JsonOption,
    ModelsOption,
    PrecisionOption,
    VerboseOption,
    command_errors,
)
from bertrt.errors import ConfigError
from bertrt.types import Device, Pooling, PrecisionChoice, Task

SHOWN_BAD_ROWS = 10


class Engine(str, Enum):
    """Where a batch job runs."""

    LOCAL = "local"
    RAY = "ray"


@app.command()
def batch(
    task: Annotated[Task, typer.Argument(help="What to compute for each row.", show_default=False)],
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="A .jsonl, .csv or .parquet file with a text column (qa: question and context columns), "
            "or a .txt file with one text per line.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="The .jsonl or .parquet file to write: one row per input row, in input order.",
            show_default=False,
        ),
    ],
    models: ModelsOption = DEFAULT_MODELS,
    engine: Annotated[
        Engine, typer.Option("--engine", help="local: this process; ray: Ray Data actors on a Ray cluster.")
    ] = Engine.LOCAL,
    text_column: Annotated[str, typer.Option("--text-column", help="The column holding the text.")] = "text",
    id_column: Annotated[
        str | None,
        typer.Option(
            "--id-column", help="The column whose value each output row keeps as its id (default: the row number)."
        ),
    ] = None,
    question_column: Annotated[
        str, typer.Option("--question-column", help="qa: the column holding the question.")
    ] = "question",
    context_column: Annotated[
        str, typer.Option("--context-column", help="qa: the column holding the context.")
    ] = "context",
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run of the same job after its last written chunk (local engine); "
            "a job with nothing to continue starts afresh.",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Stop at the first bad row instead of writing it with its error."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output, or an interrupted run's partial folder.")
    ] = False,
    chunk_rows: Annotated[
        int,
        typer.Option("--chunk-rows", min=1, help="Rows read, run (grouped by length) and written at a time."),
    ] = DEFAULT_CHUNK_ROWS,
    pooling: Annotated[
        Pooling, typer.Option("--pooling", help="embed: how token vectors become one vector.")
    ] = Pooling.MEAN,
    normalize: Annotated[
        bool, typer.Option("--normalize/--no-normalize", help="embed: scale each vector to unit length.")
    ] = False,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="ray: the cluster to join (auto, HOST:PORT or ray://HOST:10001); default: RAY_ADDRESS, "
            "else a Ray instance started on this machine for the job.",
        ),
    ] = None,
    actors: Annotated[
        int | None,
        typer.Option("--actors", min=1, help="ray: actors, each loading the bundle once (default: as many as fit)."),
    ] = None,
    cpus_per_actor: Annotated[
        int,
        typer.Option("--cpus-per-actor", min=1, help="ray: CPUs per actor, which are its ONNX Runtime threads."),
    ] = 1,
    device: DeviceOption = Device.AUTO,
    precision: PrecisionOption = PrecisionChoice.FP32,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Run a task over every row of a file into a JSONL or Parquet file, in input order.

    Memory does not grow with the file; an interrupted job (Ctrl-C, kill -9) continues with --resume.

    The output appears only when complete. Bad rows (empty, not text, a missing column) get their error.

    Example: bertrt batch classify reviews.csv --out labels.parquet --id-column review_id
    """
    with command_errors(verbose):
        job = BatchJob(
            task,
            input_path,
            out,
            models=models,
            precision=precision,
            device=device,
            text_column=text_column,
            id_column=id_column,
            question_column=question_column,
            context_column=context_column,
            pooling=pooling,
            normalize=normalize,
            chunk_rows=chunk_rows,
            strict=strict,
        )
        bar = ProgressBar(task.value)
        try:
            if engine is Engine.RAY:
                if resume:
                    raise ConfigError(
                        "--resume works with the local engine only; a Ray job survives lost workers on its own, "
                        "so rerun it with --overwrite to start over."
                    )
                from bertrt.batch.ray_engine import RayOptions, run_ray

                report = run_ray(job, RayOptions(address, actors, cpus_per_actor), overwrite=overwrite, progress=bar)
            else:
                report = run_local(job, resume=resume, overwrite=overwrite, progress=bar)
        except KeyboardInterrupt:
            bar.close()
            kept = partial_path(job.output)
            where = f"the rows written so far are in {kept}; " if kept.exists() else ""
            typer.echo(f"interrupted: {where}rerun the same command with --resume to continue.", err=True)
            raise typer.Exit(code=130) from None
        finally:
            bar.close()
        _print_report(report, json_output)


def _print_report(report: BatchReport, json_output: bool) -> None:
    for row, error in report.first_bad[:SHOWN_BAD_ROWS]:
        typer.echo(f"bad row {row:,}: {error}", err=True)
    if report.bad_rows > SHOWN_BAD_ROWS:
        typer.echo(f"... and {report.bad_rows - SHOWN_BAD_ROWS:,} more bad rows (see the error column)", err=True)
    if json_output:
        data = {**asdict(report), "output": str(report.output), "rows_per_second": report.rows_per_second}
        typer.echo(json.dumps(data))
        return
    done = report.rows - report.resumed_rows
    resumed = f" ({report.resumed_rows:,} written before the resume)" if report.resumed_rows else ""
    typer.echo(
        f"wrote {report.rows:,} rows{resumed} to {report.output}: {report.bad_rows:,} bad; "
        f"{done:,} rows in {report.seconds:.1f} s ({report.rows_per_second:,.1f} rows/s, {report.engine} engine)"
    )
