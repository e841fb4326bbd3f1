"""`bertrt serve`: an HTTP server over a bundle, batching concurrent requests.

The command builds one :class:`~bertrt.serve.ServeConfig` (API keys from ``--api-key`` and
``$BERTRT_API_KEYS`` together) and hands it to an engine: ``uvicorn``
(:func:`bertrt.serve.server.run`: this machine, ``--workers`` processes) or ``ray``
(:func:`bertrt.serve.ray_run.run`: Ray Serve replicas over a cluster, or
``--print-config`` for ``serve deploy``). The server stack (FastAPI, uvicorn,
prometheus_client: the ``serve`` extra) and Ray (the ``ray`` extra) are imported only
when the command runs, so the rest of the CLI works without them.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from bertrt.batcher import BatcherOptions
from bertrt.cli import app
from bertrt.cli.common import DEFAULT_MODELS, DeviceOption, ModelsOption, PrecisionOption, command_errors
from bertrt.errors import ConfigError
from bertrt.serve import ray_engine, ray_run
from bertrt.serve.config import DEFAULT_HOST, DEFAULT_PORT, SERVE_FORWARD_BATCH, ServeConfig, serving_runtime
from bertrt.serve.keys import API_KEYS_ENV, check_key, keys_from_text
from bertrt.serve.server import run
from bertrt.types import Device, PrecisionChoice, Task

_defaults = BatcherOptions()
SERVER = "Server"
SECURITY = "API keys and TLS"
BATCHING = "Batching and threads"
RAY = "Ray Serve (--engine ray)"


class Engine(str, Enum):
    """What runs the server."""

    UVICORN = "uvicorn"
    RAY = "ray"


TaskOption = Annotated[
    list[Task] | None,
    typer.Option("--task", help="Task to serve; repeat for several. Default: every model of the bundle."),
]

# Where and how the server listens.
HostOption = Annotated[
    str, typer.Option("--host", help="Address to bind; the default serves this machine only.", rich_help_panel=SERVER)
]
PortOption = Annotated[
    int, typer.Option("--port", min=0, max=65535, help="TCP port to listen on.", rich_help_panel=SERVER)
]
WorkersOption = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        help="Server processes, each loading its own models; /metrics covers them all.",
        rich_help_panel=SERVER,
    ),
]
MaxBodyOption = Annotated[
    float,
    typer.Option(
        "--max-body-mb", min=0.001, help="Largest request body, in MiB; larger ones get 413.", rich_help_panel=SERVER
    ),
]
ModelNameOption = Annotated[
    str | None,
    typer.Option(
        "--model-name", help="Model name reported to OpenAI clients (default: the recipe).", rich_help_panel=SERVER
    ),
]
LogLevelOption = Annotated[str, typer.Option("--log-level", help="uvicorn log level.", rich_help_panel=SERVER)]
AccessLogOption = Annotated[
    bool, typer.Option("--access-log", help="Log every request (off: use /metrics).", rich_help_panel=SERVER)
]

# Who may call the server, and HTTPS.
ApiKeyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--api-key",
        metavar="KEY",
        help="A key callers must send as `Authorization: Bearer KEY` (every endpoint but /health); repeat for "
        f"several. ${API_KEYS_ENV} adds a comma-separated list. Other users of this machine can read command "
        "lines: prefer --api-key-file or the variable.",
        show_default=False,
        rich_help_panel=SECURITY,
    ),
]
ApiKeyFileOption = Annotated[
    Path | None,
    typer.Option(
        "--api-key-file",
        help="A file of keys, one per line (# starts a comment); reread on SIGHUP and whenever it changes.",
        rich_help_panel=SECURITY,
    ),
]
MetricsPublicOption = Annotated[
    bool,
    typer.Option("--metrics-public", help="Serve /metrics without an API key.", rich_help_panel=SECURITY),
]
SslCertOption = Annotated[
    Path | None,
    typer.Option("--ssl-certfile", help="PEM certificate (chain): serve HTTPS.", rich_help_panel=SECURITY),
]
SslKeyOption = Annotated[
    Path | None,
    typer.Option("--ssl-keyfile", help="The certificate's PEM private key (unencrypted).", rich_help_panel=SECURITY),
]

# How requests are merged into model runs, and the threads that run them.
MaxBatchSizeOption = Annotated[
    int,
    typer.Option(
        "--max-batch-size",
        min=1,
        help="Texts (or QA pairs) merged into one model run; 1 turns batching off.",
        rich_help_panel=BATCHING,
    ),
]
MaxBatchTokensOption = Annotated[
    int, typer.Option("--max-batch-tokens", min=1, help="Token budget of one merged run.", rich_help_panel=BATCHING)
]
MaxWaitOption = Annotated[
    float,
    typer.Option(
        "--max-wait-ms",
        min=0,
        help="How long a request may wait for others to share its run.",
        rich_help_panel=BATCHING,
    ),
]
MaxQueueOption = Annotated[
    int,
    typer.Option(
        "--max-queue",
        min=1,
        help="Requests that may wait per task; beyond it the server answers 503.",
        rich_help_panel=BATCHING,
    ),
]
ForwardBatchOption = Annotated[
    int,
    typer.Option(
        "--forward-batch-size",
        min=1,
        help="Texts per forward pass inside a merged run (sorted by length first, so smaller passes "
        "pad short texts less).",
        rich_help_panel=BATCHING,
    ),
]
BatchThreadsOption = Annotated[
    int,
    typer.Option("--batch-threads", min=1, help="Threads running merged runs, per task.", rich_help_panel=BATCHING),
]
IntraOpThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--intra-op-threads",
        min=0,
        help="ONNX Runtime threads per model run (0: one per core). Default: the cores per worker "
        "less one, which is left to the HTTP event loop.",
        show_default=False,
        rich_help_panel=BATCHING,
    ),
]

EngineOption = Annotated[
    Engine,
    typer.Option(
        "--engine",
        help="uvicorn: this machine, --workers processes. ray: Ray Serve replicas on a Ray cluster "
        "(pip install 'bertrt[ray]').",
        rich_help_panel=SERVER,
    ),
]

# How the app is laid out on a Ray cluster.
ReplicasOption = Annotated[
    int | None,
    typer.Option("--replicas", min=1, help="Replicas per task deployment. Default: 1.", rich_help_panel=RAY),
]
MaxReplicasOption = Annotated[
    int | None,
    typer.Option(
        "--max-replicas",
        min=1,
        help="Autoscale each task between --replicas and this many replicas.",
        rich_help_panel=RAY,
    ),
]
ReplicaCpusOption = Annotated[
    float | None,
    typer.Option(
        "--replica-cpus",
        min=0.01,
        help="CPUs per replica (its ONNX Runtime threads). Default: 1, or on a Ray instance the command "
        "starts itself, the machine's CPUs shared among the replicas.",
        show_default=False,
        rich_help_panel=RAY,
    ),
]
ReplicaGpusOption = Annotated[
    float | None,
    typer.Option("--replica-gpus", min=0, help="GPUs per replica. Default: 0.", rich_help_panel=RAY),
]
MaxOngoingOption = Annotated[
    int | None,
    typer.Option(
        "--max-ongoing-requests",
        min=1,
        help="Requests one task replica holds at once; at least --max-batch-size, or batches never fill. "
        "Default: twice --max-batch-size.",
        show_default=False,
        rich_help_panel=RAY,
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray cluster to join: auto (the one `ray start` began on this machine) or HOST:PORT. Default: "
        "$RAY_ADDRESS, else a Ray instance started for this command.",
        show_default=False,
        rich_help_panel=RAY,
    ),
]
PrintConfigOption = Annotated[
    bool,
    typer.Option(
        "--print-config",
        help="Print a Ray Serve config for `serve deploy` (bertrt serve --engine ray --print-config > serve.yaml) "
        "instead of serving.",
        rich_help_panel=RAY,
    ),
]


@app.command()
def serve(
    models: ModelsOption = DEFAULT_MODELS,
    task: TaskOption = None,
    device: DeviceOption = Device.AUTO,
    precision: PrecisionOption = PrecisionChoice.FP32,
    host: HostOption = DEFAULT_HOST,
    port: PortOption = DEFAULT_PORT,
    workers: WorkersOption = 1,
    max_body_mb: MaxBodyOption = 8.0,
    model_name: ModelNameOption = None,
    log_level: LogLevelOption = "info",
    access_log: AccessLogOption = False,
    max_batch_size: MaxBatchSizeOption = _defaults.max_batch_size,
    max_batch_tokens: MaxBatchTokensOption = _defaults.max_batch_tokens,
    max_wait_ms: MaxWaitOption = _defaults.max_wait_ms,
    max_queue: MaxQueueOption = _defaults.max_queue,
    forward_batch_size: ForwardBatchOption = SERVE_FORWARD_BATCH,
    batch_threads: BatchThreadsOption = _defaults.workers,
    intra_op_threads: IntraOpThreadsOption = None,
    api_key: ApiKeyOption = None,
    api_key_file: ApiKeyFileOption = None,
    metrics_public: MetricsPublicOption = False,
    ssl_certfile: SslCertOption = None,
    ssl_keyfile: SslKeyOption = None,
    engine: EngineOption = Engine.UVICORN,
    replicas: ReplicasOption = None,
    max_replicas: MaxReplicasOption = None,
    replica_cpus: ReplicaCpusOption = None,
    replica_gpus: ReplicaGpusOption = None,
    max_ongoing_requests: MaxOngoingOption = None,
    address: AddressOption = None,
    print_config: PrintConfigOption = False,
) -> None:
    """Serve the bundle over HTTP: POST /embed, /classify, /qa, /v1/embeddings; GET /health, /metrics, /docs.

    Example: bertrt serve --models models/minilm --port 8000 --max-wait-ms 2

    On a Ray cluster: bertrt serve --engine ray --replicas 2 --address auto, or
    bertrt serve --engine ray --print-config > serve.yaml, then serve deploy serve.yaml
    """
    with command_errors(capture_warnings=False):
        api_keys = tuple(check_key(key, f"--api-key #{n}") for n, key in enumerate(api_key or (), 1))
        api_keys += keys_from_text(os.environ.get(API_KEYS_ENV, ""), f"${API_KEYS_ENV}")
        ray_flags = {
            "--replicas": replicas,
            "--max-replicas": max_replicas,
            "--replica-cpus": replica_cpus,
            "--replica-gpus": replica_gpus,
            "--max-ongoing-requests": max_ongoing_requests,
            "--address": address,
            "--print-config": print_config or None,
        }
        if engine is Engine.UVICORN:
            given = [flag for flag, value in ray_flags.items() if value is not None]
            if given:
                raise ConfigError(f"Only --engine ray takes {', '.join(given)}; add --engine ray, or leave them out.")
        else:
            uvicorn_flags = {"--workers": workers > 1, "--intra-op-threads": intra_op_threads is not None}
            given = [flag for flag, value in uvicorn_flags.items() if value]
            if given:
                raise ConfigError(
                    f"Only --engine uvicorn takes {', '.join(given)}; on Ray, use --replicas (processes) and "
                    "--replica-cpus (each replica's threads)."
                )
        config = ServeConfig(
            models=models,
            device=device,
            precision=precision,
            tasks=tuple(task or ()),
            runtime=serving_runtime(intra_op_threads, workers, forward_batch_size),
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
            api_keys=api_keys,
            api_key_file=api_key_file,
            metrics_public=metrics_public,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
        warning = config.exposure_warning()
        if warning is not None:
            typer.echo(f"warning: {warning}", err=True)
        if engine is Engine.UVICORN:
            run(config)
            return
        options = ray_engine.RayServeOptions(
            replicas=replicas or 1,
            max_replicas=max_replicas,
            replica_cpus=replica_cpus,
            replica_gpus=replica_gpus or 0.0,
            max_ongoing_requests=max_ongoing_requests,
            address=address,
        )
        if print_config:
            typer.echo(ray_engine.serve_config_yaml(config, options), nl=False)
            return
        ray_run.run(config, options, log_line=lambda line: typer.echo(line, err=True))
