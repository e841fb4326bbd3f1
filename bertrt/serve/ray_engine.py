"""`bertrt serve --engine ray`: the same HTTP API on Ray Serve, for traffic past one machine.

The app has one Serve deployment per task (``embed``, ``classify``, ``qa``: the task's
runner behind a ``@serve.batch`` method, see :mod:`bertrt.serve.ray_app`) and an
``ingress`` deployment: the very FastAPI app of ``bertrt serve``, mounted with
``@serve.ingress``, whose routes send each request to its task's deployment.

This module holds the engine's settings and needs no Ray: the options
(:class:`RayServeOptions`), each deployment's settings (:func:`deployment_settings`, the
one place they are worked out, for ``serve.run`` and for the ``serve.yaml`` of
``--print-config`` alike), and what replicas send the ingress. :mod:`bertrt.serve.ray_run`
runs the app from the command line. Ray itself is imported only when a command needs it,
so ``import bertrt`` never imports ray; it comes with the ``ray`` extra.

Batching maps onto Serve as follows: ``max_batch_size`` (texts or QA pairs per merged run)
and ``max_wait_ms`` become the ``@serve.batch`` method's ``max_batch_size`` and
``batch_wait_timeout_s``, reconfigurable without a restart through ``user_config``;
``max_queue`` becomes each task deployment's ``max_queued_requests`` (beyond it: 503 with
``Retry-After``). ``max_ongoing_requests`` must be at least ``max_batch_size``, or a
replica never holds enough requests to fill a batch. ONNX Runtime's threads in a replica
equal the CPUs Ray gave it (``num_cpus``).

Example::

    options = RayServeOptions(replicas=2, replica_cpus=1)
    print(serve_config_yaml(config, options))     # the serve.yaml for `serve deploy`
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from typing import Any

from bertrt.batcher import BatcherOptions, BatchReport
from bertrt.errors import ConfigError
from bertrt.serve.config import PATH_FIELDS, ServeConfig
from bertrt.serve.keys import API_KEYS_ENV
from bertrt.types import Device

INSTALL_HINT = "--engine ray needs Ray Serve, which is not installed; pip install 'bertrt[ray]'."
APP_NAME = "bertrt"
INGRESS = "ingress"
# serve.yaml's import path of the application builder (bertrt.serve.ray_app.app_builder).
BUILDER = "bertrt.serve.ray_app:app_builder"
# The ingress only parses HTTP and awaits its task deployments: no CPU reserved for it.
INGRESS_CPUS = 0.0
# Requests the ingress may hold beyond what its task deployments can (/health, /metrics).
INGRESS_SPARE_REQUESTS = 64
# ServeConfig fields that serve.yaml carries elsewhere, or that mean nothing on Ray: where to
# listen and TLS are Serve's http_options, batching is each deployment's settings, a replica's
# threads follow its CPUs, and literal API keys never go into the file.
NOT_FOR_RAY = (
    "host",
    "port",
    "workers",
    "log_level",
    "access_log",
    "batching",
    "api_keys",
    "ssl_certfile",
    "ssl_keyfile",
)
NOT_FOR_RAY_RUNTIME = ("intra_op_threads", "inter_op_threads")


@dataclass(frozen=True)
class RayServeOptions:
    """How the app is laid out on a Ray cluster.

    ``replicas``: replicas per task deployment; with ``max_replicas`` above it, Serve
    autoscales each task between the two. ``replica_cpus`` / ``replica_gpus``: what each
    replica asks Ray for (``ray_actor_options``); its ONNX Runtime threads equal its CPUs.
    None for ``replica_cpus`` means 1, except on a Ray instance :func:`run` starts itself,
    whose CPUs are then shared evenly among the replicas. ``max_ongoing_requests``:
    requests one replica holds at once (default: two batches' worth). ``address``: the
    cluster to join (``auto``, ``host:port``); None joins ``$RAY_ADDRESS`` when set, else
    starts a Ray instance on this machine for as long as the command runs.

    >>> RayServeOptions(replicas=2).replicas
    2
    """

    replicas: int = 1
    max_replicas: int | None = None
    replica_cpus: float | None = None
    replica_gpus: float = 0.0
    max_ongoing_requests: int | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be 1 or more, got {self.replicas}.")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ConfigError(
                f"--max-replicas ({self.max_replicas}) is less than --replicas ({self.replicas}); raise it or drop it."
            )
        if self.replica_cpus is not None and self.replica_cpus <= 0:
            raise ConfigError(f"--replica-cpus must be more than 0, got {self.replica_cpus}.")
        if self.replica_gpus < 0:
            raise ConfigError(f"--replica-gpus must be 0 or more, got {self.replica_gpus}.")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise ConfigError(f"max_ongoing_requests must be 1 or more, got {self.max_ongoing_requests}.")

    @property
    def most_replicas(self) -> int:
        """The most replicas a task deployment may run."""
        return self.max_replicas or self.replicas


@dataclass(frozen=True)
class Reply:
    """What a task replica returns for one request: its results, and on one request of each
    merged run the run's :class:`~bertrt.batcher.BatchReport`, so the ingress records every
    run exactly once in ``/metrics``."""

    results: list[Any]
    batch: BatchReport | None = None


@dataclass(frozen=True)
class ReplicaInfo:
    """One task replica as it describes itself: where it runs and how it is set up."""

    task: str
    replica: str
    node_id: str
    provider: str
    intra_op_threads: int
    max_batch_size: int
    batch_wait_timeout_s: float
    calls: int
    recipe: str
    embedding_dim: int | None


def batch_settings(batching: BatcherOptions) -> dict[str, Any]:
    """A task deployment's ``user_config``: the ``@serve.batch`` settings, changeable on a
    running app (Serve calls the replicas' ``reconfigure``; they do not restart)."""
    return {"max_batch_size": batching.max_batch_size, "batch_wait_timeout_s": batching.max_wait_ms / 1000}


def batching_from_settings(user_config: dict[str, Any]) -> BatcherOptions:
    """The batching a ``user_config`` asks for; a ConfigError names a key it does not know."""
    unknown = set(user_config) - {"max_batch_size", "batch_wait_timeout_s"}
    if unknown:
        raise ConfigError(
            f"Unknown user_config key(s) {', '.join(sorted(unknown))}; a task deployment takes "
            "max_batch_size and batch_wait_timeout_s."
        )
    defaults = BatcherOptions()
    wait_s = user_config.get("batch_wait_timeout_s", defaults.max_wait_ms / 1000)
    if isinstance(wait_s, bool) or not isinstance(wait_s, int | float):
        raise ConfigError(f"batch_wait_timeout_s must be a number of seconds, got {wait_s!r}.")
    size = user_config.get("max_batch_size", defaults.max_batch_size)
    return BatcherOptions(max_batch_size=size, max_wait_ms=1000 * wait_s)


def check_batches_fill(max_ongoing_requests: int, max_batch_size: int) -> None:
    """A ConfigError unless a replica may hold a whole batch of requests at once."""
    if max_ongoing_requests < max_batch_size:
        raise ConfigError(
            f"max_ongoing_requests ({max_ongoing_requests}) is less than max_batch_size ({max_batch_size}), so a "
            "replica never holds enough requests to fill a batch; raise max_ongoing_requests or lower max_batch_size."
        )


def deployment_settings(config: ServeConfig, options: RayServeOptions) -> dict[str, dict[str, Any]]:
    """Each deployment's Serve options by deployment name: one per task, and the ingress.

    Raises ConfigError when ``max_ongoing_requests`` cannot fill a batch, or when GPUs are
    asked for a CPU-only app.
    """
    if options.replica_gpus > 0 and config.device is Device.CPU:
        raise ConfigError("--replica-gpus asks for GPUs but --device is cpu; pass --device auto or cuda.")
    batching = config.batching
    max_ongoing = options.max_ongoing_requests or 2 * batching.max_batch_size
    check_batches_fill(max_ongoing, batching.max_batch_size)
    cpus = options.replica_cpus if options.replica_cpus is not None else 1.0
    task_settings: dict[str, Any] = {
        **_scaling(options, target=batching.max_batch_size),
        "max_ongoing_requests": max_ongoing,
        "max_queued_requests": batching.max_queue,
        "user_config": batch_settings(batching),
        "ray_actor_options": {"num_cpus": cpus, "num_gpus": options.replica_gpus},
    }
    settings = {task.value: copy.deepcopy(task_settings) for task in config.tasks}
    # The ingress only awaits: it may hold all its tasks can take (so their limits answer
    # 503 first), and room besides for /health and /metrics.
    task_capacity = max_ongoing * options.most_replicas + batching.max_queue
    settings[INGRESS] = {
        "num_replicas": 1,
        "max_ongoing_requests": len(config.tasks) * task_capacity + INGRESS_SPARE_REQUESTS,
        "ray_actor_options": {"num_cpus": INGRESS_CPUS},
    }
    return settings


def _scaling(options: RayServeOptions, target: int) -> dict[str, Any]:
    """A fixed ``num_replicas``, or an ``autoscaling_config`` that adds a replica once each
    holds about a batch's worth of requests (``target``)."""
    if options.max_replicas is None or options.max_replicas == options.replicas:
        return {"num_replicas": options.replicas}
    return {
        "autoscaling_config": {
            "min_replicas": options.replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": target,
        }
    }


def app_args(config: ServeConfig) -> dict[str, Any]:
    """The application builder's ``args``: the config without what Ray settles itself."""
    data = json.loads(config.to_json())
    for name in NOT_FOR_RAY:
        data.pop(name)
    for name in NOT_FOR_RAY_RUNTIME:
        data["runtime"].pop(name)
    return {"config": data}


def config_from_args(args: dict[str, Any]) -> ServeConfig:
    """The :class:`ServeConfig` an application builder's ``args`` carry (see :func:`app_args`)."""
    if set(args) != {"config"}:
        raise ConfigError(f"The bertrt app takes one argument, config; got {', '.join(sorted(args)) or 'none'}.")
    return ServeConfig.from_json(json.dumps(args["config"]))


def resolve_config(config: ServeConfig) -> ServeConfig:
    """``config`` as every node must read it, after checking its bundle, API key file and TLS
    files here: absolute paths (nodes do not share this working directory), the served tasks
    and the model name spelt out. A BundleError or ConfigError says what is wrong."""
    from bertrt.serve.host import http_tasks, open_bundle
    from bertrt.serve.server import check_security

    bundle = open_bundle(config)
    check_security(config)
    return replace(
        config,
        models=config.models.resolve(),
        tasks=config.tasks or http_tasks(bundle),
        model_name=config.model_name or bundle.manifest.recipe,
        **{name: getattr(config, name).resolve() for name in PATH_FIELDS if getattr(config, name) is not None},
    )


def http_options(config: ServeConfig) -> dict[str, Any]:
    """Serve's ``http_options`` for ``config``: where its HTTP proxies listen, and HTTPS when
    the config names a certificate (Ray Serve's proxies take the same TLS files as uvicorn)."""
    return {"host": config.host, "port": config.port, **config.ssl_options()}


def serve_config(config: ServeConfig, options: RayServeOptions) -> dict[str, Any]:
    """The Serve config document (``serve.yaml``) for a resolved ``config``."""
    deployments = [{"name": name, **settings} for name, settings in deployment_settings(config, options).items()]
    return {
        "proxy_location": "EveryNode",
        "http_options": http_options(config),
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": BUILDER,
                "args": app_args(config),
                "deployments": deployments,
            }
        ],
    }


def serve_config_yaml(config: ServeConfig, options: RayServeOptions) -> str:
    """The ``serve.yaml`` for ``config`` (its bundle checked here), validated against Ray
    Serve's own schema, with a header saying how to deploy it."""
    serve = import_serve()
    import yaml

    if config.api_keys:
        raise ConfigError(
            "--print-config does not write API keys into serve.yaml, where anyone who reads the file would find "
            f"them; pass --api-key-file (a file at the same path on every node), not --api-key or ${API_KEYS_ENV}."
        )
    config = resolve_config(config)
    document = serve_config(config, options)
    serve.schema.ServeDeploySchema.model_validate(document)
    header = [
        "# Written by `bertrt serve --engine ray --print-config`.",
        "# Deploy it on a running cluster (`ray start --head` first): serve deploy serve.yaml",
        f"# Every node needs bertrt[ray] installed and the bundle at {config.models}.",
        "# user_config (batching) changes apply to running replicas; args.config changes restart them.",
    ]
    body: str = yaml.safe_dump(document, sort_keys=False)
    return "\n".join(header) + "\n" + body


def import_serve() -> Any:
    """``ray.serve``, or a ConfigError saying what to install."""
    try:
        from ray import serve
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return serve
