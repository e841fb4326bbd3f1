"""Running ``bertrt serve --engine ray`` from the command line: join a Ray cluster (or start
a Ray instance here), deploy the app, serve until SIGINT or SIGTERM, then take it down.

For a deployment that outlives the command, ``--print-config`` writes a ``serve.yaml``
instead (:func:`bertrt.serve.ray_engine.serve_config_yaml`) for ``serve deploy``.

Example::

    run(config, RayServeOptions(replicas=2, address="auto"))   # blocks until Ctrl-C
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from bertrt.errors import ConfigError
from bertrt.ray_cluster import LOCAL, init_ray, ray_target
from bertrt.serve.config import ServeConfig
from bertrt.serve.ray_engine import (
    APP_NAME,
    RayServeOptions,
    deployment_settings,
    http_options,
    import_serve,
    resolve_config,
)

log = logging.getLogger("bertrt.serve")


def run(config: ServeConfig, options: RayServeOptions, log_line: Callable[[str], None] = log.info) -> None:
    """Serve ``config`` on Ray Serve until SIGINT or SIGTERM (blocks), then take the app down.

    Joins ``options.address`` (or ``$RAY_ADDRESS``), else starts a Ray instance here and
    stops it at the end. The bundle is checked before Ray starts.
    """
    serve = import_serve()
    import ray

    from bertrt.serve.ray_app import build_application

    config = resolve_config(config)
    # Signals are caught from the start: one that comes while the app deploys stops it once deployed.
    with _connected(ray, options.address) as own_instance, _stop_requested() as stop:
        if own_instance:
            options = _fit_this_machine(options, len(config.tasks), ray.cluster_resources().get("CPU", 1.0))
        deployment_settings(config, options)  # refuse a bad layout before anything deploys
        serve.start(http_options=http_options(config), proxy_location="EveryNode")
        try:
            serve.run(build_application(config, options), name=APP_NAME, route_prefix="/", blocking=False)
            cpus = options.replica_cpus if options.replica_cpus is not None else 1.0
            scheme = "https" if config.ssl_certfile else "http"
            log_line(
                f"Serving {', '.join(t.value for t in config.tasks)} on Ray Serve at {scheme}://{config.host}:{config.port}"
                f" ({options.replicas} replica(s) per task, {cpus:g} CPU(s) each); Ctrl-C stops it."
            )
            while not stop.wait(1.0):
                pass
            log_line("Stopping: taking the app down.")
        finally:
            if own_instance:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)


def _fit_this_machine(options: RayServeOptions, tasks: int, cpus: float) -> RayServeOptions:
    """On a Ray instance of this command's own: the CPUs shared evenly among the replicas
    unless ``--replica-cpus`` says otherwise, and a clear error when they cannot all fit."""
    replicas = tasks * options.most_replicas
    if options.replica_cpus is None:
        # Ray counts CPUs in steps of 1/10000; round down so that every replica fits.
        return replace(options, replica_cpus=max(0.01, math.floor(100 * cpus / replicas) / 100))
    if options.replica_cpus * replicas > cpus:
        raise ConfigError(
            f"{replicas} replicas of {options.replica_cpus:g} CPU(s) need {options.replica_cpus * replicas:g} CPUs but "
            f"this machine's Ray instance has {cpus:g}; lower --replica-cpus or --replicas, or join a cluster with "
            "--address."
        )
    return options


@contextmanager
def _connected(ray: Any, address: str | None) -> Iterator[bool]:
    """Connected to the cluster at ``address`` (or ``$RAY_ADDRESS``), or to a Ray instance
    started here (never the last one ``ray start`` left on this machine); yields whether the
    instance is this command's own, which is stopped at the end."""
    target = ray_target(address)
    init_ray(ray, target)
    try:
        yield target == LOCAL
    finally:
        ray.shutdown()


@contextmanager
def _stop_requested() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (Ray's own handlers, which
    exit at once, are put back after it)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
