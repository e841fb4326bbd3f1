"""Running the app with uvicorn: one process, or ``workers`` processes sharing the port.

The bundle is opened and checked once, here, before the port is bound, so a wrong folder
or task fails at once; so are the API key file and the TLS certificate. One process serves
that very bundle; worker processes each open their own (each loads its own models), and
their metrics meet in a folder this process makes for them (see :mod:`bertrt.serve.metrics`).

uvicorn handles SIGINT and SIGTERM: it stops accepting connections, lets requests in
flight finish (at most ``shutdown_timeout_s``), then the app's lifespan closes its
batchers, so a stopped server leaves no request unanswered and no thread running.

With workers, SIGHUP to the main process makes uvicorn start a replacement for each worker
and retire the old one once the new one answers; a replacement that does not answer within
uvicorn's worker health-check timeout is killed and the old workers are kept. uvicorn's
default (5 s) is shorter than a worker's start (imports included) on a busy machine, so
:data:`WORKER_START_TIMEOUT_S` is passed instead.

Example::

    run(ServeConfig(models=Path("models/minilm"), port=8000, workers=2))
"""

from __future__ import annotations

import copy
import os
import ssl
from typing import Any

from bertrt.errors import ConfigError
from bertrt.serve.config import ServeConfig
from bertrt.serve.keys import ApiKeys

# How long uvicorn waits for a worker to answer its health check (at start, on SIGHUP and
# while serving) before it counts the worker as hung.
WORKER_START_TIMEOUT_S = 60


def run(config: ServeConfig) -> None:
    """Serve ``config`` until interrupted (blocks)."""
    try:
        import uvicorn

        from bertrt.serve.app import CONFIG_ENV, create_app
        from bertrt.serve.host import open_bundle
        from bertrt.serve.metrics import ServeMetrics, drop_created_series, worker_metrics_dir
    except ImportError as exc:
        raise ConfigError(
            f"bertrt serve needs FastAPI, uvicorn and prometheus_client ({exc.name} is missing); install them "
            "with pip install 'bertrt[serve]'."
        ) from None
    bundle = open_bundle(config)
    check_security(config)
    drop_created_series()  # this process belongs to `bertrt serve`
    common = uvicorn_options(config)
    if config.workers == 1:
        uvicorn.run(create_app(config, bundle=bundle, metrics=ServeMetrics()), **common)  # type: ignore[arg-type]
        return
    # Worker processes import the app by name; the config travels in the environment.
    os.environ[CONFIG_ENV] = config.to_json()
    with worker_metrics_dir():
        uvicorn.run("bertrt.serve.app:app_from_environment", factory=True, workers=config.workers, **common)  # type: ignore[arg-type]


def uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    """The keyword arguments ``uvicorn.run`` gets for ``config``, whatever the worker count."""
    return {
        "log_config": log_config(),
        "host": config.host,
        "port": config.port,
        "log_level": config.log_level,
        "access_log": config.access_log,
        "timeout_graceful_shutdown": int(config.shutdown_timeout_s),
        "timeout_worker_healthcheck": WORKER_START_TIMEOUT_S,
        **config.ssl_options(),
    }


def check_security(config: ServeConfig) -> None:
    """Read the API key file and load the TLS certificate and key of ``config`` once, before
    any port is bound, so that a wrong path or file fails with one clear ConfigError."""
    ApiKeys.from_config(config)
    if config.ssl_certfile is None or config.ssl_keyfile is None:
        return
    try:
        # The password callback keeps OpenSSL from prompting on the terminal for an encrypted key.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"The TLS certificate {config.ssl_certfile} or its key {config.ssl_keyfile} cannot be loaded ({reason}); "
            "pass a PEM certificate with --ssl-certfile and its unencrypted private key with --ssl-keyfile."
        ) from None


def log_config() -> dict[str, Any]:
    """uvicorn's logging setup, with bertrt's own log lines (model loading) on its handler."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["bertrt"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
