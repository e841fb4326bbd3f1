"""The settings of one server: which bundle, which tasks, how to batch, where to listen.

A :class:`ServeConfig` round-trips through JSON so that ``--workers N`` can hand it to
uvicorn's worker processes (they rebuild the app from an environment variable).

Example::

    config = ServeConfig(models=Path("models/minilm"), batching=BatcherOptions(max_wait_ms=5))
    ServeConfig.from_json(config.to_json()) == config   # True
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bertrt.batcher import BatcherOptions
from bertrt.errors import ConfigError
from bertrt.options import RuntimeOptions, coerce_enum
from bertrt.types import Device, Precision, Task

# Loopback by default: exposing a model server to the network is a deliberate choice.
DEFAULT_HOST = "127.0.0.1"
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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers - 1)


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
    """

    models: Path = Path("models/minilm")
    device: Device = Device.AUTO
    precision: Precision = Precision.FP32
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

    def to_json(self) -> str:
        """The config as one JSON document (enums as values, paths as str)."""
        data = asdict(self)
        data["models"] = str(self.models)
        data["device"] = self.device.value
        data["precision"] = self.precision.value
        data["tasks"] = [task.value for task in self.tasks]
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
        data["precision"] = coerce_enum(Precision, data.get("precision", Precision.FP32), "precision")
        data["tasks"] = tuple(coerce_enum(Task, t, "task") for t in data.get("tasks", ()))
        data["runtime"] = RuntimeOptions(**data.get("runtime", {}))
        data["batching"] = BatcherOptions(**data.get("batching", {}))
        return cls(**data)
