"""Prometheus metrics in the text exposition format (0.0.4), written by hand: the three
metric kinds a model server needs are a few lines each, and no client library is needed.

Every metric is thread-safe (batch reports arrive on batcher threads, requests on the
event loop). :class:`ServeMetrics` holds the server's own metrics.

Example::

    metrics = ServeMetrics()
    metrics.requests.inc(endpoint="/embed", code="200")
    print(metrics.render())   # "# HELP bertrt_requests_total ..." lines
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable

from bertrt.batcher import BatchReport

Labels = tuple[tuple[str, str], ...]

# Request latency buckets, in seconds: 1 ms to 10 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Metric:
    """Shared name, help text, lock and label handling."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help_text = help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A count that only goes up, per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to the series of ``labels``."""
        key = _key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def samples(self) -> list[str]:
        with self._lock:
            return [f"{self.name}{_format(k)} {_number(v)}" for k, v in sorted(self._values.items())]


class Gauge(_Metric):
    """A value read when scraped, per label set, from a callback."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], Iterable[tuple[dict[str, str], float]]]) -> None:
        super().__init__(name, help_text)
        self._read = read

    def samples(self) -> list[str]:
        return [f"{self.name}{_format(_key(labels))} {_number(value)}" for labels, value in self._read()]


class Histogram(_Metric):
    """Observations counted in cumulative buckets, with their sum and count, per label set."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Iterable[float]) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[Labels, list[float]] = {}  # bucket counts..., +Inf count, sum

    def observe(self, value: float, **labels: str) -> None:
        """Record ``value`` in the series of ``labels``."""
        key = _key(labels)
        slot = bisect.bisect_left(self.buckets, value)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            series[slot] += 1
            series[-1] += value

    def samples(self) -> list[str]:
        lines = []
        with self._lock:
            snapshot = sorted((key, list(series)) for key, series in self._series.items())
        for key, series in snapshot:
            cumulative = 0.0
            for bound, count in zip((*self.buckets, math.inf), series[:-1], strict=True):
                cumulative += count
                lines.append(f"{self.name}_bucket{_format(key + (('le', _number(bound)),))} {_number(cumulative)}")
            lines.append(f"{self.name}_sum{_format(key)} {_number(series[-1])}")
            lines.append(f"{self.name}_count{_format(key)} {_number(cumulative)}")
        return lines


class ServeMetrics:
    """The server's metrics: requests, errors and latency per endpoint; batch sizes, batch
    run time and queue depth per task; readiness."""

    def __init__(self) -> None:
        self.requests = Counter("bertrt_requests_total", "HTTP requests by endpoint and status code.")
        self.errors = Counter("bertrt_request_errors_total", "Failed requests by endpoint and reason.")
        self.latency = Histogram(
            "bertrt_request_duration_seconds", "Request latency by task and endpoint, in seconds.", LATENCY_BUCKETS
        )
        self.batch_size = Histogram(
            "bertrt_batch_size", "Texts (or QA pairs) per model run, by task.", BATCH_SIZE_BUCKETS
        )
        self.batch_calls = Histogram(
            "bertrt_batch_requests", "Requests merged into one model run, by task.", BATCH_SIZE_BUCKETS
        )
        self.batch_seconds = Histogram(
            "bertrt_batch_duration_seconds", "Model run time per merged batch, by task, in seconds.", LATENCY_BUCKETS
        )
        self.batch_failures = Counter(
            "bertrt_batch_failures_total", "Merged runs that failed and were retried call by call, by task."
        )
        self._extra: list[_Metric] = []

    def add_gauge(self, name: str, help_text: str, read: Callable[[], Iterable[tuple[dict[str, str], float]]]) -> None:
        """Register a gauge read at scrape time (queue depth, readiness)."""
        self._extra.append(Gauge(name, help_text, read))

    def batch_observer(self, task: str) -> Callable[[BatchReport], None]:
        """A batcher ``on_batch`` callback recording into the batch metrics of ``task``."""

        def observe(report: BatchReport) -> None:
            self.batch_size.observe(report.items, task=task)
            self.batch_calls.observe(report.calls, task=task)
            self.batch_seconds.observe(report.seconds, task=task)
            if report.failed:
                self.batch_failures.inc(task=task)

        return observe

    def render(self) -> str:
        """Every metric in the Prometheus text format."""
        metrics: list[_Metric] = [
            self.requests,
            self.errors,
            self.latency,
            self.batch_size,
            self.batch_calls,
            self.batch_seconds,
            self.batch_failures,
            *self._extra,
        ]
        lines = [line for metric in metrics for line in (*metric.header(), *metric.samples())]
        return "\n".join(lines) + "\n"


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _format(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """Prometheus number syntax: integers without a fraction, +Inf spelled out."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
