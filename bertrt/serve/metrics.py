"""The server's Prometheus metrics, kept by ``prometheus_client``.

One server process: the metrics live in a registry of their own (never prometheus_client's
global one), so any number of apps can live in one process without their names colliding.

Several worker processes (``bertrt serve --workers N``): prometheus_client's multiprocess
mode. The serving process makes a fresh folder, names it in ``$PROMETHEUS_MULTIPROC_DIR``
before the workers start (:func:`worker_metrics_dir`) and removes it once they have stopped.
Each worker writes its samples to memory-mapped files there; whichever worker answers
``GET /metrics`` merges every worker's files, so one scrape covers the whole server.
Counters and histograms add up over all workers, dead ones included (their requests
happened); ``bertrt_queue_depth`` sums over the live workers and ``bertrt_ready`` is their
minimum (1 only when every live worker has its models loaded).

Hosts (the local :class:`~bertrt.serve.host.ModelHost`, or any other process that serves
the same app) report through the methods below, not through prometheus_client itself.

Example::

    metrics = ServeMetrics()
    metrics.count_request("/embed", "200", seconds=0.004, task="embed")
    metrics.render().decode()   # "# HELP bertrt_requests_total ..." lines
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from bertrt.batcher import BatchReport
from bertrt.errors import ConfigError

# prometheus_client reads this variable once, when it is first imported in a process.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# Request latency buckets, in seconds: 1 ms to 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Which task each endpoint runs, for the per-task latency histograms.
ENDPOINT_TASKS = {"/embed": "embed", "/v1/embeddings": "embed", "/classify": "classify", "/qa": "qa"}
KNOWN_PATHS = {*ENDPOINT_TASKS, "/health", "/metrics", "/openapi.json", "/docs"}


def endpoint_label(path: str) -> str:
    """``path`` when it is one of the server's routes, else ``other`` (bounded label values)."""
    return path if path in KNOWN_PATHS else "other"


class ServeMetrics:
    """The server's metrics: requests, errors and latency per endpoint; batch sizes, batch
    run time and queue depth per task; readiness.

    ``multiprocess_dir`` (multiprocess mode) is the folder every worker of one server
    writes to; None keeps the metrics in this process only. In multiprocess mode keep one
    instance per process: instances in one process share their files.
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        if multiprocess_dir is not None and not _multiprocess_values():
            raise ConfigError(
                f"prometheus_client was imported before ${MULTIPROC_ENV} was set, so this process cannot write "
                "multiprocess metrics; set it before the process starts (bertrt serve --workers does)."
            )
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "bertrt_requests_total",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "code"],
            registry=registry,
        )
        self.errors = Counter(
            "bertrt_request_errors_total",
            "Failed requests by endpoint and reason.",
            ["endpoint", "reason"],
            registry=registry,
        )
        self.latency = Histogram(
            "bertrt_request_duration_seconds",
            "Request latency by task and endpoint, in seconds.",
            ["task", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "bertrt_batch_size",
            "Texts (or QA pairs) per model run, by task.",
            ["task"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_calls = Histogram(
            "bertrt_batch_requests",
            "Requests merged into one model run, by task.",
            ["task"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "bertrt_batch_duration_seconds",
            "Model run time per merged batch, by task, in seconds.",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_failures = Counter(
            "bertrt_batch_failures_total",
            "Merged runs that failed and were retried call by call, by task.",
            ["task"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "bertrt_queue_depth",
            "Requests waiting for a batch, by task.",
            ["task"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.ready = Gauge(
            "bertrt_ready",
            "1 once every served model is loaded, else 0.",
            multiprocess_mode="livemin",
            registry=registry,
        )

    @classmethod
    def for_this_process(cls) -> ServeMetrics:
        """Multiprocess metrics when prometheus_client runs in multiprocess mode here
        (``$PROMETHEUS_MULTIPROC_DIR`` was set when it was imported), else this process's own."""
        path = os.environ.get(MULTIPROC_ENV)
        return cls(Path(path) if path and _multiprocess_values() else None)

    def count_request(self, endpoint: str, code: str, seconds: float | None = None, task: str | None = None) -> None:
        """Count one answered request; ``seconds`` is its latency, recorded for task endpoints."""
        self.requests.labels(endpoint=endpoint, code=code).inc()
        if seconds is not None and task is not None:
            self.latency.labels(task=task, endpoint=endpoint).observe(seconds)

    def count_error(self, endpoint: str, reason: str) -> None:
        """Count one failed request by its machine-readable ``reason``."""
        self.errors.labels(endpoint=endpoint, reason=reason).inc()

    def set_ready(self, ready: bool) -> None:
        """Whether every served model is loaded."""
        self.ready.set(1.0 if ready else 0.0)

    def batch_observer(self, task: str) -> Callable[[BatchReport], None]:
        """A batcher ``on_batch`` callback recording into the batch metrics of ``task``."""
        size, calls = self.batch_size.labels(task=task), self.batch_calls.labels(task=task)
        seconds, failures = self.batch_seconds.labels(task=task), self.batch_failures.labels(task=task)

        def observe(report: BatchReport) -> None:
            size.observe(report.items)
            calls.observe(report.calls)
            seconds.observe(report.seconds)
            if report.failed:
                failures.inc()

        return observe

    def queue_observer(self, task: str) -> Callable[[int], None]:
        """A batcher ``on_queue`` callback setting the queue depth of ``task`` (0 until called)."""
        depth = self.queue_depth.labels(task=task)
        depth.set(0)
        return depth.set

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (:data:`CONTENT_TYPE`): this process's,
        or in multiprocess mode every worker's, merged."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        # A fresh registry per scrape, as prometheus_client documents: a registry holding
        # this process's own metrics as well would export them twice.
        _mark_dead_workers(self.multiprocess_dir)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def close(self) -> None:
        """Retire this process's live gauges (multiprocess mode; a no-op otherwise). Its
        counters and histograms stay in the totals."""
        if self.multiprocess_dir is not None:
            _mark_dead(os.getpid(), self.multiprocess_dir)


def drop_created_series() -> None:
    """Stop prometheus_client exporting a ``*_created`` series beside each counter and
    histogram, in this whole process: for the processes ``bertrt serve`` owns, so that one
    worker or several (multiprocess mode has no such series) export the same series."""
    disable_created_metrics()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def worker_metrics_dir() -> Iterator[Path]:
    """A fresh, empty ``$PROMETHEUS_MULTIPROC_DIR`` for worker processes started inside the
    block; the folder is removed and the variable restored when the block ends, that is,
    once the workers have stopped."""
    previous = os.environ.get(MULTIPROC_ENV)
    path = Path(tempfile.mkdtemp(prefix="bertrt-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def _multiprocess_values() -> bool:
    """Whether prometheus_client keeps this process's values in files (multiprocess mode)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def _mark_dead_workers(path: Path) -> None:
    """Retire the live gauges of workers that are gone without retiring them (killed or
    crashed; uvicorn starts a replacement under a new process id)."""
    pids = {file.stem.rsplit("_", 1)[1] for file in path.glob("gauge_live*_*.db")}
    for pid in pids:
        if pid.isdigit() and not _alive(int(pid)):
            _mark_dead(int(pid), path)


def _mark_dead(pid: int, path: Path) -> None:
    # Two workers answering scrapes at once may retire the same files.
    with contextlib.suppress(FileNotFoundError):
        mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
