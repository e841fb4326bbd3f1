"""The server's Prometheus metrics: every family in one process, apps kept apart, and with
`bertrt serve --workers 2` one scrape that covers both worker processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bertrt.batcher import BatchReport

pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bertrt.serve.metrics import MULTIPROC_ENV, ServeMetrics  # noqa: E402

FAMILIES = {
    "bertrt_requests_total": "counter",
    "bertrt_request_errors_total": "counter",
    "bertrt_request_duration_seconds": "histogram",
    "bertrt_batch_size": "histogram",
    "bertrt_batch_requests": "histogram",
    "bertrt_batch_duration_seconds": "histogram",
    "bertrt_batch_failures_total": "counter",
    "bertrt_queue_depth": "gauge",
    "bertrt_ready": "gauge",
}


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def has_sample(text: str, name: str) -> bool:
    return any(s.name == name for family in text_string_to_metric_families(text) for s in family.samples)


def test_every_family_with_its_help_and_cumulative_buckets() -> None:
    metrics = ServeMetrics()
    observe = metrics.batch_observer("classify")
    for items in (1, 2, 3, 300):
        observe(BatchReport(calls=1, items=items, tokens=10 * items, seconds=0.002, failed=items == 300))
    metrics.count_request("/classify", "200", seconds=0.03, task="classify")
    metrics.count_request("/metrics", "200")
    metrics.count_error("/classify", "overloaded")
    metrics.queue_observer("classify")(2)
    text = metrics.render().decode()
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")}
    assert {name: types.get(name) for name in FAMILIES} == FAMILIES
    assert "# HELP bertrt_ready 1 once every served model is loaded, else 0." in text
    buckets = [value(text, "bertrt_batch_size_bucket", task="classify", le=le) for le in ("1.0", "2.0", "4.0", "+Inf")]
    assert buckets == [1, 2, 3, 4]
    assert value(text, "bertrt_batch_size_sum", task="classify") == 306
    assert value(text, "bertrt_batch_failures_total", task="classify") == 1
    assert value(text, "bertrt_request_duration_seconds_count", task="classify", endpoint="/classify") == 1
    assert value(text, "bertrt_request_duration_seconds_count", endpoint="/metrics") == 0  # not a task endpoint
    assert value(text, "bertrt_request_errors_total", endpoint="/classify", reason="overloaded") == 1
    assert value(text, "bertrt_queue_depth", task="classify") == 2 and value(text, "bertrt_ready") == 0
    metrics.set_ready(True)
    assert value(metrics.render().decode(), "bertrt_ready") == 1


def test_apps_in_one_process_keep_their_own_counts() -> None:
    first, second = ServeMetrics(), ServeMetrics()
    first.count_request("/embed", "200")
    first.count_request("/embed", "200")
    second.count_request("/embed", "200")
    assert value(first.render().decode(), "bertrt_requests_total", endpoint="/embed") == 2
    assert value(second.render().decode(), "bertrt_requests_total", endpoint="/embed") == 1


def test_multiprocess_metrics_need_prometheus_client_in_multiprocess_mode(tmp_path: Path) -> None:
    from bertrt.errors import ConfigError

    if os.environ.get(MULTIPROC_ENV):
        pytest.skip(f"${MULTIPROC_ENV} is set for the whole test run")
    with pytest.raises(ConfigError, match=MULTIPROC_ENV):
        ServeMetrics(tmp_path)


# A worker that records, then dies without retiring its gauges (as a killed worker does).
CRASHED_WORKER = """
import os
from bertrt.serve.metrics import ServeMetrics
metrics = ServeMetrics.for_this_process()
assert metrics.multiprocess_dir is not None
metrics.count_request("/embed", "200", seconds=0.01, task="embed")
metrics.queue_observer("embed")(3)
os._exit(0)
"""
# A live worker: ready, nothing queued; it scrapes, retires itself, scrapes again.
LIVE_WORKER = """
from bertrt.serve.metrics import ServeMetrics
metrics = ServeMetrics.for_this_process()
metrics.count_request("/embed", "200", seconds=0.01, task="embed")
metrics.queue_observer("embed")
metrics.set_ready(True)
print(metrics.render().decode())
print("-- closed --")
metrics.close()
print(metrics.render().decode())
"""


def test_dead_workers_leave_the_live_gauges_and_stay_in_the_counts(tmp_path: Path) -> None:
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", CRASHED_WORKER], env=env, check=True, timeout=120)
    output = subprocess.run(
        [sys.executable, "-c", LIVE_WORKER], env=env, check=True, timeout=120, capture_output=True, text=True
    ).stdout
    live, closed = output.split("-- closed --")
    # Counters add up over every worker that ever ran; gauges only over the live one.
    assert value(live, "bertrt_requests_total", endpoint="/embed", code="200") == 3
    assert value(live, "bertrt_request_duration_seconds_count", task="embed") == 3
    assert value(live, "bertrt_queue_depth", task="embed") == 0, "a dead worker's queue still counts"
    assert value(live, "bertrt_ready") == 1, "a dead worker (never ready) still holds readiness down"
    assert value(closed, "bertrt_requests_total", endpoint="/embed", code="200") == 3
    assert not has_sample(closed, "bertrt_ready") and not has_sample(closed, "bertrt_queue_depth")


def per_worker_requests(metrics_dir: Path, endpoint: str) -> dict[str, float]:
    """Requests to ``endpoint`` by worker process id, read from each worker's own file."""
    counts = {}
    for file in metrics_dir.glob("counter_*.db"):
        families = MultiProcessCollector.merge([str(file)])
        counts[file.stem.split("_")[1]] = sum(
            s.value
            for f in families
            for s in f.samples
            if s.name == "bertrt_requests_total" and s.labels["endpoint"] == endpoint
        )
    return counts


def test_two_workers_answer_one_scrape_for_both(tiny_bundle: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "bertrt", "serve", "--models", str(tiny_bundle), "--port", str(port)]
    command += ["--device", "cpu", "--task", "embed", "--workers", "2", "--intra-op-threads", "1", "--max-wait-ms", "0"]
    # The serving process makes its metrics folder under $TMPDIR: here, where the test can look.
    env = {key: val for key, val in os.environ.items() if key != MULTIPROC_ENV} | {"TMPDIR": str(tmp_path)}
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sent = 0
    try:
        metrics_dir = wait_for_workers(url, tmp_path, workers=2, timeout=90)
        # New connections land on either worker; send until both have served (bounded).
        with ThreadPoolExecutor(8) as pool:
            for _ in range(10):
                responses = list(
                    pool.map(lambda i: httpx.post(f"{url}/embed", json={"texts": f"text {i}"}, timeout=30), range(16))
                )
                assert [r.status_code for r in responses] == [200] * 16
                sent += len(responses)
                by_worker = per_worker_requests(metrics_dir, "/embed")
                if len(by_worker) == 2 and all(by_worker.values()):
                    break
        assert len(by_worker) == 2 and all(by_worker.values()), f"one worker served every request: {by_worker}"
        # A worker counts a request once its response has gone out, so the last few may land
        # a moment after the client has them: wait for them (bounded), then compare.
        deadline = time.monotonic() + 5
        while sum(by_worker.values()) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
            by_worker = per_worker_requests(metrics_dir, "/embed")
        assert sum(by_worker.values()) == sent
        # Whichever worker answers the scrape, it counts both workers' requests.
        for _ in range(4):
            scrape = httpx.get(f"{url}/metrics", timeout=10).text
            assert value(scrape, "bertrt_requests_total", endpoint="/embed", code="200") == sent
            assert value(scrape, "bertrt_batch_size_count", task="embed") >= 1
            assert value(scrape, "bertrt_ready") == 1 and not has_sample(scrape, "bertrt_requests_created")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()
    output = (tmp_path / "server.log").read_text()
    assert process.returncode in (0, -signal.SIGTERM), output
    assert output.count("Application shutdown complete") == 2 and "Traceback" not in output
    assert not list(tmp_path.glob("bertrt-metrics-*")), "the metrics folder outlived the server"


def wait_for_workers(url: str, tmp_path: Path, workers: int, timeout: float) -> Path:
    """The server's metrics folder, once ``workers`` processes have written to it and the
    scrape says every live one is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        folders = list(tmp_path.glob("bertrt-metrics-*"))
        if folders and len(list(folders[0].glob("gauge_livemin_*.db"))) == workers:
            try:
                if value(httpx.get(f"{url}/metrics", timeout=5).text, "bertrt_ready") == 1:
                    return folders[0]
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    raise TimeoutError(f"{workers} workers did not become ready in {timeout} s")
