"""`bertrt bench`: time bertrt against PyTorch, optimum and plain ONNX Runtime on a bundle.

The harness lives in :mod:`bertrt.bench` (the repository's ``benchmarks/`` folder) and is
imported only when the command runs; the PyTorch-based baselines are imported only when
requested and installed, so ``bertrt bench --system ort --system bertrt-fp32`` works without
torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bertrt.cli import app
from bertrt.cli.common import DEFAULT_MODELS, DeviceOption, JsonOption, ModelsOption, command_errors
from bertrt.types import Device


@app.command()
def bench(
    models: ModelsOption = DEFAULT_MODELS,
    json_output: JsonOption = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="Draw the results into this PNG file.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the results JSON to this file.")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="A few iterations of everything on small workloads.")] = False,
    system: Annotated[
        list[str] | None,
        typer.Option(
            "--system",
            help="System to time; repeat for several. Default: every one installed: torch, "
            "torch-pipeline, optimum, optimum-pipeline, ort, st-torch, st-onnx, st-int8 "
            "(sentence-transformers, embedder only), torch-bf16 (CPUs with AMX or AVX-512 bf16), "
            "bertrt-fp32, bertrt-int8, bertrt-fp16. Opt-in: ort-twin, a second plain ort with sessions "
            "of its own, which shows how far two identical systems drift apart in the run.",
        ),
    ] = None,
    workload: Annotated[
        list[str] | None,
        typer.Option(
            "--workload",
            help="Workload to run; repeat for several: w1, w2, w3, scaling, gemm, footprint. Default: all.",
        ),
    ] = None,
    device: DeviceOption = Device.CPU,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads given to every engine.")] = 2,
    squad: Annotated[
        Path | None, typer.Option("--squad", help="SQuAD v1.1 JSON for W3 (default: the shared heldout8 file).")
    ] = None,
    stream_texts: Annotated[
        int | None, typer.Option("--stream-texts", min=1, help="W2 stream size (default 2000).")
    ] = None,
    qa_questions: Annotated[
        int | None, typer.Option("--qa-questions", min=1, help="W3 questions (default 500).")
    ] = None,
    repeats: Annotated[
        int | None, typer.Option("--repeats", min=1, help="Most timed calls per latency figure (default 200).")
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds",
            min=1,
            help="Rounds per latency figure, the systems taking turns in each (default 3; 2 with --smoke).",
        ),
    ] = None,
    passes: Annotated[
        int | None,
        typer.Option(
            "--passes",
            min=1,
            help="Passes over each W2 and W3 stream per system; the best pass is the figure (default 1).",
        ),
    ] = None,
    seconds: Annotated[
        float | None,
        typer.Option(
            "--seconds",
            min=0.01,
            help="Time budget of each system on each latency figure, shared out over the rounds (default 3).",
        ),
    ] = None,
    sessions: Annotated[
        int | None,
        typer.Option(
            "--sessions",
            min=1,
            help="Copies of every system, each with sessions of its own; the latency rounds take them in turn, "
            "so a figure does not ride on one session's luck (default 1; at most --rounds).",
        ),
    ] = None,
) -> None:
    """Time every system on the same inputs and threads; print a table (or --json), with ratios to the baselines.

    The results file records the command line (``command``, as the process received it) to rerun the same measurement.
    """
    with command_errors(capture_warnings=True):
        from bertrt.bench.config import BenchConfig
        from bertrt.bench.harness import run_benchmark
        from bertrt.bench.report import markdown_table, write_json

        sizes = {
            "squad_path": squad,
            "stream_texts": stream_texts,
            "qa_questions": qa_questions,
            "repeats": repeats,
            "latency_rounds": rounds,
            "sessions": sessions,
            "max_seconds": seconds,
            "stream_passes": passes,
        }
        overrides: dict[str, object] = {key: value for key, value in sizes.items() if value is not None}
        if system:
            overrides["systems"] = tuple(system)
        if workload:
            overrides["workloads"] = tuple(workload)
        preset = "smoke" if smoke else "full"
        config = BenchConfig.preset(preset, bundle=models, device=device, threads=threads, **overrides)
        results = run_benchmark(config, log=lambda line: typer.echo(line, err=True))
        if out is not None:
            write_json(results, out)
        if plot is not None:
            from bertrt.bench.plots import write_plots

            write_plots(results, plot)
        typer.echo(json.dumps(results, indent=2) if json_output else markdown_table(results))
