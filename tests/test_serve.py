"""`bertrt serve` over real HTTP on loopback: every endpoint, validation errors, overload,
readiness, metrics and shutdown, on the tiny bundle.

The API tests (those on the ``client`` fixture) run against both engines: uvicorn in this
process, and Ray Serve on the session's Ray instance (marked ``ray``)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bertrt
from bertrt.batcher import BatcherOptions
from bertrt.serve import ServeConfig

# The server stack is the optional `serve` extra; httpx comes with the `test` extra.
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from bertrt.serve.app import CONFIG_ENV, app_from_environment, create_app  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The qa head")
CONTEXT = "paris is the capital of france. the immune system is a body system which has cells."
TEXTS = ["i love paris", "the film was very bad", "a", "the plot of the movie is good"]


class ServerThread:
    """The real app under uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, config: ServeConfig) -> None:
        self.app = create_app(config)
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]})

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until_ready(self.url)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.socket.close()


def wait_until_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not become ready in {timeout} s")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    wanted = "".join(f'(?=[^}}]*{k}="{re.escape(v)}")' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}(?:\{{{wanted}[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_for_queue(url: str, task: str, depth: int) -> None:
    deadline = time.monotonic() + 10
    while metric(httpx.get(f"{url}/metrics").text, "bertrt_queue_depth", task=task) < depth:
        assert time.monotonic() < deadline, "the request never reached the queue"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def config(tiny_bundle: Path) -> ServeConfig:
    return ServeConfig(models=tiny_bundle, device=bertrt.Device.CPU, batching=BatcherOptions(max_wait_ms=20))


@pytest.fixture(scope="module", params=["uvicorn", pytest.param("ray", marks=pytest.mark.ray)])
def server(request: pytest.FixtureRequest, config: ServeConfig) -> Iterator[Any]:
    """The app on one engine: uvicorn in this process, or Ray Serve (``--engine ray``)."""
    if request.param == "uvicorn":
        with ServerThread(config) as running:
            yield running
        return
    from ray_serving import RayApp

    with RayApp(request.getfixturevalue("ray_serve"), config) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[Any]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> bertrt.Bundle:
    return bertrt.load(tiny_bundle, device="cpu")


def test_health_lists_the_served_tasks(client: Any) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ready" and set(response.json()["tasks"]) == {"embed", "classify", "qa"}


def test_embed_equals_the_library(client: Any, bundle: bertrt.Bundle) -> None:
    response = client.post("/embed", json={"texts": TEXTS, "pooling": "cls", "normalize": True})
    assert response.status_code == 200
    results = response.json()["results"]
    expected = bundle.embedder(TEXTS, pooling="cls", normalize=True)
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got["vector"], want.vector, rtol=1e-5, atol=1e-6)
        assert got["tokens"] == list(want.tokens) and "token_embeddings" not in got
    [single] = client.post("/embed", json={"texts": "a", "token_embeddings": True}).json()["results"]
    assert len(single["token_embeddings"]) == len(single["tokens"]) == 3


def test_classify_equals_the_library(client: Any, bundle: bertrt.Bundle) -> None:
    response = client.post("/classify", json={"texts": TEXTS, "top_k": 2})
    assert response.status_code == 200
    assert response.json()["results"] == [r.to_dict() for r in bundle.classifier(TEXTS, top_k=2)]


def test_qa_equals_the_library(client: Any, bundle: bertrt.Bundle) -> None:
    single = client.post("/qa", json={"question": "what has cells?", "context": CONTEXT, "top_k": 2})
    assert single.status_code == 200
    assert single.json()["results"] == [bundle.qa.answer("what has cells?", CONTEXT, top_k=2).to_dict()]
    pairs = {"question": ["what?", "who?"], "context": [CONTEXT * 4, "the actors"], "max_answer_length": 5}
    expected = bundle.qa(pairs["question"], pairs["context"], max_answer_length=5)
    assert client.post("/qa", json=pairs).json()["results"] == [r.to_dict() for r in expected]


def test_openai_embeddings(client: Any, bundle: bertrt.Bundle) -> None:
    response = client.post("/v1/embeddings", json={"input": TEXTS[:2], "model": "anything"})
    assert response.status_code == 200
    body = response.json()
    expected = bundle.embedder(TEXTS[:2], pooling="mean", normalize=True)
    assert body["object"] == "list" and body["model"] == "tiny"
    assert [d["index"] for d in body["data"]] == [0, 1]
    for item, want in zip(body["data"], expected, strict=True):
        np.testing.assert_allclose(item["embedding"], want.vector, rtol=1e-5, atol=1e-6)
    assert body["usage"]["prompt_tokens"] == sum(len(e.tokens) for e in expected)
    packed = client.post("/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}).json()
    vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, expected[0].vector, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "path, body, status, kind, phrase",
    [
        ("/classify", b'{"texts": ', 400, "invalid_json", "not valid JSON"),
        ("/classify", {"text": "typo"}, 422, "invalid_request", "texts: Field required"),
        ("/classify", {"texts": 5}, 422, "invalid_request", "texts"),
        ("/classify", {"texts": "x", "top_k": 0}, 422, "invalid_request", "top_k"),
        ("/embed", {"texts": "x", "pooling": "max"}, 422, "invalid_request", "pooling"),
        ("/qa", {"question": ["a", "b"], "context": "c"}, 422, "invalid_input", "one context per question"),
        ("/v1/embeddings", {"input": [1, 2, 3]}, 422, "invalid_input", "token ids"),
        ("/classify", {"texts": "a" * 2_000_001}, 422, "invalid_input", "max_chars_per_text"),
        ("/v1/embeddings", {"input": "x", "dimensions": 3}, 422, "invalid_input", "omit dimensions"),
        ("/nowhere", {}, 404, "http_error", "/docs"),
    ],
)
def test_invalid_requests_get_clear_errors(
    client: Any, path: str, body: Any, status: int, kind: str, phrase: str
) -> None:
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == kind and phrase in error["message"]


def test_an_empty_list_gets_no_results(client: Any) -> None:
    empty = {"/classify": {"texts": []}, "/embed": {"texts": []}, "/qa": {"question": [], "context": []}}
    for path, body in empty.items():
        response = client.post(path, json=body)
        assert response.status_code == 200 and response.json() == {"results": []}


def test_wrong_method_is_405(client: Any) -> None:
    response = client.get("/classify")
    assert response.status_code == 405 and "GET is not allowed on /classify" in response.json()["error"]["message"]


def test_openapi_schema_lists_every_endpoint(client: Any) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/embed", "/classify", "/qa", "/v1/embeddings", "/health", "/metrics"} <= set(schema["paths"])
    assert "ClassifyRequest" in schema["components"]["schemas"]


def test_concurrent_requests_share_batches(client: Any, bundle: bertrt.Bundle) -> None:
    before = client.get("/metrics").text
    texts = [f"text number {i} " * (1 + i % 4) for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda t: client.post("/classify", json={"texts": t}), texts))
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["results"][0] for r in responses] == [r.to_dict() for r in bundle.classifier(texts)]
    after = client.get("/metrics").text
    runs = metric(after, "bertrt_batch_requests_count", task="classify") - metric(
        before, "bertrt_batch_requests_count", task="classify"
    )
    assert 1 <= runs < 16, "16 concurrent requests should share model runs"


def test_metrics_count_requests_errors_and_batches(client: Any) -> None:
    before = client.get("/metrics").text
    client.post("/embed", json={"texts": ["a", "b"]})
    client.post("/embed", json={"texts": 1})
    response = client.get("/metrics")
    after = response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("bertrt_requests_total", endpoint="/embed", code="200") == 1
    assert grew("bertrt_requests_total", endpoint="/embed", code="422") == 1
    assert grew("bertrt_request_errors_total", endpoint="/embed", reason="invalid_request") == 1
    assert grew("bertrt_request_duration_seconds_count", task="embed", endpoint="/embed") == 2
    assert grew("bertrt_batch_size_sum", task="embed") == 2
    assert metric(after, "bertrt_ready") == 1 and "bertrt_queue_depth{task=" in after
    assert "# TYPE bertrt_request_duration_seconds histogram" in after


def test_a_full_queue_answers_503(tiny_bundle: Path, config: ServeConfig) -> None:
    # The first request waits 600 ms for company and fills the one-call queue meanwhile.
    threads_before = set(threading.enumerate())
    tiny_queue = replace(config, tasks=(bertrt.Task.CLASSIFY,), batching=BatcherOptions(max_queue=1, max_wait_ms=600))
    with ServerThread(tiny_queue) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(http.post, "/classify", json={"texts": "first"})
            wait_for_queue(server.url, "classify", 1)
            refused = http.post("/classify", json={"texts": "second"})
            assert first.result().status_code == 200
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "overloaded" and "max_queue" in refused.json()["error"]["message"]
        metrics = http.get("/metrics").text
        assert metric(metrics, "bertrt_request_errors_total", endpoint="/classify", reason="overloaded") == 1
        assert http.post("/qa", json={"question": "q", "context": "c"}).status_code == 404
    assert not [t for t in set(threading.enumerate()) - threads_before if t.name.startswith("bertrt-")]


def test_not_ready_until_loaded_then_failed_load_is_reported(config: ServeConfig, fp32_only_bundle: Path) -> None:
    async def probe(app: Any, start: bool) -> list[tuple[int, dict[str, Any]]]:
        if start:
            app.state.host.start()
            assert not app.state.host.wait_ready(30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            health = await http.get("/health")
            task = await http.post("/classify", json={"texts": "x"})
        return [(health.status_code, health.json()), (task.status_code, task.json())]

    # Without its lifespan the app never starts loading: the "loading" state, held still.
    (health, body), (status, error) = asyncio.run(probe(create_app(config), start=False))
    assert health == 503 and body["status"] == "loading"
    assert status == 503 and error["error"]["type"] == "not_ready"
    broken = replace(config, models=fp32_only_bundle, precision=bertrt.Precision.INT8)
    app = create_app(broken)
    (health, body), (status, error) = asyncio.run(probe(app, start=True))
    assert health == 503 and body["status"] == "failed" and "int8" in body["error"]
    assert status == 503 and "failed to load" in error["error"]["message"]
    app.state.host.close()


def test_bodies_over_the_limit_get_413(config: ServeConfig) -> None:
    app = create_app(replace(config, max_body_bytes=200))
    big = b'{"texts": "' + b"a " * 200 + b'"}'

    async def chunks() -> Any:
        for start in range(0, len(big), 50):
            yield big[start : start + 50]

    async def send() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            declared = await http.post("/classify", content=big, headers={"Content-Type": "application/json"})
            streamed = await http.post("/classify", content=chunks(), headers={"Content-Type": "application/json"})
            small = await http.post("/classify", json={"texts": "x"})
        return [declared, streamed, small]

    declared, streamed, small = asyncio.run(send())
    assert "content-length" not in streamed.request.headers
    for response in (declared, streamed):
        assert response.status_code == 413 and response.json()["error"]["type"] == "body_too_large"
        assert "limit of 200 bytes" in response.json()["error"]["message"]
    assert small.status_code == 503  # under the limit, it reaches the (never started) model


def test_serve_command_answers_then_stops_cleanly_on_sigterm(tiny_bundle: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "bertrt", "serve", "--models", str(tiny_bundle), "--port", str(port)]
    command += ["--device", "cpu", "--task", "embed", "--max-wait-ms", "800"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{url}/embed", json={"texts": "in flight"}, timeout=30)
            wait_for_queue(url, "embed", 1)
            process.send_signal(signal.SIGTERM)
            response = pending.result()
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert response.status_code == 200 and response.json()["results"][0]["tokens"][0] == "[CLS]"
    # uvicorn re-raises the signal once shut down, so the exit status is "terminated".
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete" in stderr and "Traceback" not in stderr


def test_serve_command_refuses_a_missing_bundle(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bertrt.cli import app

    result = CliRunner().invoke(app, ["serve", "--models", str(tmp_path / "absent")])
    assert result.exit_code == 2 and "is not a folder" in result.stderr


def test_workers_rebuild_the_config_from_the_environment(config: ServeConfig, monkeypatch: Any) -> None:
    tuned = replace(config, tasks=(bertrt.Task.QA,), batching=BatcherOptions(max_batch_size=7), workers=2)
    assert ServeConfig.from_json(tuned.to_json()) == tuned
    monkeypatch.setenv(CONFIG_ENV, tuned.to_json())
    app = app_from_environment()
    assert app.state.host.tasks == (bertrt.Task.QA,) and app.state.host.config == tuned


def test_uvicorn_takes_every_option_and_waits_for_slow_workers(config: ServeConfig) -> None:
    import uvicorn

    from bertrt.serve.server import WORKER_START_TIMEOUT_S, uvicorn_options

    options = uvicorn_options(replace(config, workers=2))
    # uvicorn's Config refuses a keyword it does not know, so this checks every name.
    built = uvicorn.Config("bertrt.serve.app:app_from_environment", factory=True, workers=2, **options)
    # On SIGHUP a replacement worker must answer within this or the old workers stay (uvicorn's
    # own default of 5 s is shorter than a worker's start on a busy machine).
    assert built.timeout_worker_healthcheck == WORKER_START_TIMEOUT_S >= 30
    assert built.timeout_graceful_shutdown == int(config.shutdown_timeout_s)


def test_serve_command_builds_one_config_and_opens_the_bundle_once(tiny_bundle: Path, monkeypatch: Any) -> None:
    from typer.testing import CliRunner

    import bertrt.serve.metrics
    from bertrt.cli import app
    from bertrt.manifest import BundleManifest

    served: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append((app, options)))
    monkeypatch.setattr(bertrt.serve.metrics, "drop_created_series", lambda: None)  # process-wide otherwise
    reads: list[Path] = []
    read = BundleManifest.read.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(BundleManifest, "read", classmethod(lambda cls, path: reads.append(path) or read(cls, path)))
    options = ["--task", "classify", "--port", "0", "--max-batch-size", "7", "--forward-batch-size", "4"]
    options += ["--intra-op-threads", "1", "--max-body-mb", "1", "--max-wait-ms", "3", "--model-name", "m"]
    result = CliRunner().invoke(app, ["serve", "--models", str(tiny_bundle), "--device", "cpu", *options])
    assert result.exit_code == 0, result.output
    [(served_app, uvicorn_options)] = served
    host = served_app.state.host
    assert reads == [tiny_bundle], "the bundle's manifest should be read once"
    assert host.bundle.path == tiny_bundle and host.tasks == (bertrt.Task.CLASSIFY,)
    expected = ServeConfig(
        models=tiny_bundle,
        device=bertrt.Device.CPU,
        tasks=(bertrt.Task.CLASSIFY,),
        runtime=bertrt.RuntimeOptions(intra_op_threads=1, batch_size=4),
        batching=BatcherOptions(max_batch_size=7, max_wait_ms=3),
        port=0,
        model_name="m",
        max_body_bytes=1024 * 1024,
    )
    assert host.config == expected and uvicorn_options["port"] == 0


def test_serve_command_refuses_a_task_the_bundle_lacks(fp32_only_bundle: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from typer.testing import CliRunner

    from bertrt.cli import app

    embed_only = Path(shutil.copytree(fp32_only_bundle, tmp_path / "embed-only"))
    manifest = json.loads((embed_only / "manifest.json").read_text())
    manifest["models"] = {folder: task for folder, task in manifest["models"].items() if task == "embed"}
    (embed_only / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["serve", "--models", str(embed_only), "--task", "qa", "--port", "0"])
    assert result.exit_code == 2 and "has no qa model (it serves: embed)" in result.stderr


def test_importing_bertrt_and_its_cli_leaves_the_server_stack_out() -> None:
    stack = "('fastapi', 'uvicorn', 'starlette', 'prometheus_client', 'ray')"
    code = f"import sys, bertrt, bertrt.cli; print(any(m in sys.modules for m in {stack}))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert output.stdout.strip() == "False"


def test_serve_benchmark_smoke_run(tiny_bundle: Path) -> None:
    from bertrt.bench.serve_bench import ServeBenchConfig, run_serve_bench

    config = ServeBenchConfig(
        models=tiny_bundle, clients=4, seconds=0.6, warmup=0.2, rounds=1, n_texts=50, model_costs=False
    )
    results = run_serve_bench(config, log=lambda _: None)
    batched, unbatched = results["figures"]["batched"], results["figures"]["unbatched"]
    assert batched["requests"] > 0 and unbatched["requests"] > 0 and batched["errors"] == unbatched["errors"] == 0
    assert unbatched["mean_texts_per_run"] == 1.0 and batched["p99_ms"] >= batched["p50_ms"]
    assert results["ratios"]["throughput"] == pytest.approx(batched["throughput_rps"] / unbatched["throughput_rps"])
    assert len(results["load_average"]["batched"]) == 1 and "cpu_model" in results["machine"]
