"""The settings of one server: which bundle, which tasks, how to batch, where to listen.

A :class:`ServeConfig` round-trips through JSON so that ``--workers N`` can hand it to
uvicorn's worker processes (they rebuild the app from an environment variable). It also
holds who may call the server (API keys) and its TLS files, so that every engine serving
the app (uvicorn here, Ray Serve) honours the same options.

Example::

    config = ServeConfig(models=Path("models/minilm"), batching=BatcherOptions(max_wait_ms=5))
    ServeConfig.from_json(config.to_json()) == config   # True
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bertrt.batcher import BatcherOptions
from bertrt.errors import ConfigError
from bertrt.lanes import usable_cores
from bertrt.options import RuntimeOptions, coerce_enum
from bertrt.serve.keys import check_key
from bertrt.types import Device, PrecisionChoice, Task

# Loopback by default: exposing a model server to the network is a deliberate choice.
DEFAULT_HOST = "127.0.0.1"
LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}
DEFAULT_PORT = 8000
# A merged run of 32 single-text requests holds texts of every length; cut into passes of
# 8 (longest first), short texts are padded far less than in one pass of 32. Measured on
# MiniLM with Rotten Tomatoes sentences, one thread: 8.0 CPU-ms per text in passes of 8,
# 12.7 in one pass of 32.
SERVE_FORWARD_BATCH = 8


def serving_threads(workers: int = 1) -> int:
    """ONNX Runtime intra-op threads per server process: the usable cores shared among the
    ``workers``, less one for each process's event loop (HTTP parsing and JSON).

    Measured on 2 shared cores with MiniLM and 32 clients: one intra-op thread served short
    queries at 206 requests/s, ONNX Runtime's default of one per core at 110 (its idle
    threads spin, taking CPU from the event loop).

    >>> serving_threads(workers=1) >= 1
    True
    """
    return max(1, usable_cores() // workers - 1)


def serving_runtime(
    intra_op_threads: int | None = None, workers: int = 1, forward_batch_size: int = SERVE_FORWARD_BATCH
) -> RuntimeOptions:
    """Runtime options for serving: ``intra_op_threads`` (default :func:`serving_threads`)
    and forward passes of ``forward_batch_size`` texts."""
    threads = serving_threads(workers) if intra_op_threads is None else intra_op_threads
    return RuntimeOptions(intra_op_threads=threads, batch_size=forward_batch_size)


@dataclass(frozen=True)
class ServeConfig:
    """What ``bertrt serve`` runs.

    ``tasks`` empty serves every task of the bundle. ``runtime`` defaults to
    :func:`serving_runtime` (its ``batch_size`` caps each forward pass inside a merged
    run). ``model_name`` is the name reported to OpenAI clients (default: the bundle's
    recipe). ``shutdown_timeout_s`` bounds how long a stopping server waits for requests
    in flight; ``max_body_bytes`` bounds a request body (larger ones get 413 before they
    are read whole).

    ``api_keys`` and ``api_key_file`` (one key per line, reread while serving): when either
    is given, every endpoint but ``/health`` wants ``Authorization: Bearer KEY``, and
    ``/metrics`` too unless ``metrics_public``. ``ssl_certfile`` and ``ssl_keyfile`` (PEM,
    both or neither) serve HTTPS. The keys are left out of ``repr()``.
    """

    models: Path = Path("models/minilm")
    device: Device = Device.AUTO
    precision: PrecisionChoice = PrecisionChoice.FP32
    tasks: tuple[Task, ...] = ()
    runtime: RuntimeOptions = field(default_factory=serving_runtime)
    batching: BatcherOptions = field(default_factory=BatcherOptions)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = 1
    model_name: str | None = None
    log_level: str = "info"
    access_log: bool = False
    shutdown_timeout_s: float = 30.0
    max_body_bytes: int = 8 * 1024 * 1024
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_key_file: Path | None = None
    metrics_public: bool = False
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}.")
        if self.workers < 1:
            raise ConfigError(f"workers must be 1 or more, got {self.workers}.")
        if self.batching.max_batch_size > self.runtime.max_texts_per_call:
            raise ConfigError(
                f"max_batch_size ({self.batching.max_batch_size}) is more than max_texts_per_call "
                f"({self.runtime.max_texts_per_call}); a merged run must fit one runner call, so lower it."
            )
        if self.max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes must be 1 or more, got {self.max_body_bytes}.")
        if self.shutdown_timeout_s <= 0:
            raise ConfigError(f"shutdown_timeout_s must be positive, got {self.shutdown_timeout_s}.")
        for number, key in enumerate(self.api_keys, 1):
            check_key(key, f"API key #{number}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError(
                "HTTPS needs both a certificate and its private key; pass --ssl-certfile and --ssl-keyfile together."
            )

    @property
    def requires_api_key(self) -> bool:
        """Whether callers must present an API key."""
        return bool(self.api_keys) or self.api_key_file is not None

    def ssl_options(self) -> dict[str, str]:
        """The TLS files by the keyword names uvicorn and Ray Serve's ``HTTPOptions`` share
        (``ssl_certfile``, ``ssl_keyfile``); empty for plain HTTP."""
        if self.ssl_certfile is None or self.ssl_keyfile is None:
            return {}
        return {"ssl_certfile": str(self.ssl_certfile), "ssl_keyfile": str(self.ssl_keyfile)}

    def exposure_warning(self) -> str | None:
        """One sentence when the server listens beyond this machine without API keys, else None.

        Not an error: some deployments authenticate at a proxy in front of the server.
        """
        if self.requires_api_key or is_loopback(self.host):
            return None
        return (
            f"Serving on {self.host} without an API key: anyone who can reach port {self.port} can use the "
            "models; pass --api-key or --api-key-file, unless a proxy in front authenticates callers."
        )

    def to_json(self) -> str:
        """The config as one JSON document (enums as values, paths as str)."""
        data = asdict(self)
        data["models"] = str(self.models)
        data["device"] = self.device.value
        data["precision"] = self.precision.value
        data["tasks"] = [task.value for task in self.tasks]
        for name in PATH_FIELDS:
            data[name] = None if data[name] is None else str(data[name])
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """The inverse of :meth:`to_json`."""
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"Unknown serve settings {', '.join(sorted(unknown))}; expected {', '.join(sorted(known))}."
            )
        data["models"] = Path(data.get("models", cls.models))
        data["device"] = coerce_enum(Device, data.get("device", Device.AUTO), "device")
        data["precision"] = coerce_enum(PrecisionChoice, data.get("precision", PrecisionChoice.FP32), "precision")
        data["tasks"] = tuple(coerce_enum(Task, t, "task") for t in data.get("tasks", ()))
        data["runtime"] = RuntimeOptions(**data.get("runtime", {}))
        data["batching"] = BatcherOptions(**data.get("batching", {}))
        data["api_keys"] = tuple(data.get("api_keys", ()))
        for name in PATH_FIELDS:
            data[name] = None if data.get(name) is None else Path(data[name])
        return cls(**data)


# Optional file paths of a ServeConfig (JSON has no Path).
PATH_FIELDS = ("api_key_file", "ssl_certfile", "ssl_keyfile")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) reaches only this machine; names other than
    ``localhost`` are not resolved, so they count as reaching further.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
