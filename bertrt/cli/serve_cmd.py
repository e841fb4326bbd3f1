"""`bertrt serve`: an HTTP server over a bundle, batching concurrent requests.

The server stack (FastAPI, uvicorn: the ``serve`` extra) is imported only when the
command runs, so the rest of the CLI works without it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from bertrt.batcher import BatcherOptions
from bertrt.bundle import Bundle
from bertrt.cli import app
from bertrt.cli.common import DEFAULT_MODELS, DeviceOption, ModelsOption, PrecisionOption, command_errors
from bertrt.serve.config import DEFAULT_HOST, DEFAULT_PORT, SERVE_FORWARD_BATCH, ServeConfig, serving_runtime
from bertrt.serve.host import served_tasks
from bertrt.types import Device, Precision, Task

_defaults = BatcherOptions()


@app.command()
def serve(
    models: ModelsOption = DEFAULT_MODELS,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; the default serves this machine only.")
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port to listen on.")] = DEFAULT_PORT,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Server processes, each loading its own models.")
    ] = 1,
    task: Annotated[
        list[Task] | None,
        typer.Option("--task", help="Task to serve; repeat for several. Default: every model of the bundle."),
    ] = None,
    max_batch_size: Annotated[
        int,
        typer.Option(
            "--max-batch-size", min=1, help="Texts (or QA pairs) merged into one model run; 1 turns batching off."
        ),
    ] = _defaults.max_batch_size,
    max_batch_tokens: Annotated[
        int, typer.Option("--max-batch-tokens", min=1, help="Token budget of one merged run.")
    ] = _defaults.max_batch_tokens,
    max_wait_ms: Annotated[
        float,
        typer.Option("--max-wait-ms", min=0, help="How long a request may wait for others to share its run."),
    ] = _defaults.max_wait_ms,
    max_queue: Annotated[
        int,
        typer.Option("--max-queue", min=1, help="Requests that may wait per task; beyond it the server answers 503."),
    ] = _defaults.max_queue,
    forward_batch_size: Annotated[
        int,
        typer.Option(
            "--forward-batch-size",
            min=1,
            help="Texts per forward pass inside a merged run (sorted by length first, so smaller passes "
            "pad short texts less).",
        ),
    ] = SERVE_FORWARD_BATCH,
    batch_threads: Annotated[
        int, typer.Option("--batch-threads", min=1, help="Threads running merged runs, per task.")
    ] = _defaults.workers,
    intra_op_threads: Annotated[
        int | None,
        typer.Option(
            "--intra-op-threads",
            min=0,
            help="ONNX Runtime threads per model run (0: one per core). Default: the cores per worker "
            "less one, which is left to the HTTP event loop.",
            show_default=False,
        ),
    ] = None,
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", min=0.001, help="Largest request body, in MiB; larger ones get 413.")
    ] = 8.0,
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="Model name reported to OpenAI clients (default: the recipe).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request (off: use /metrics).")] = False,
    device: DeviceOption = Device.AUTO,
    precision: PrecisionOption = Precision.FP32,
) -> None:
    """Serve the bundle over HTTP: POST /embed, /classify, /qa, /v1/embeddings; GET /health, /metrics, /docs.

    Example: bertrt serve --models models/minilm --port 8000 --max-wait-ms 2
    """
    with command_errors(capture_warnings=False):
        tasks = tuple(task or ())
        served_tasks(Bundle(models), tasks)  # a wrong folder or task fails here, before binding
        config = ServeConfig(
            models=models,
            device=device,
            precision=precision,
            tasks=tasks,
            runtime=replace(serving_runtime(intra_op_threads, workers), batch_size=forward_batch_size),
            batching=BatcherOptions(
                max_batch_size=max_batch_size,
                max_batch_tokens=max_batch_tokens,
                max_wait_ms=max_wait_ms,
                max_queue=max_queue,
                workers=batch_threads,
            ),
            host=host,
            port=port,
            workers=workers,
            model_name=model_name,
            log_level=log_level,
            access_log=access_log,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
        )
        from bertrt.serve.server import run

        run(config)
