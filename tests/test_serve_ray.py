"""`bertrt serve --engine ray` beyond the HTTP API (which test_serve.py runs on both engines):
the command line and the serve.yaml it prints, how the ingress turns Ray's failures into the
app's errors, batching and ONNX Runtime threads on the replicas, a full queue, API keys,
joining a running cluster, and `serve deploy` of the printed file (HTTPS, a key file, then
new batching taken by the running replica) on a cluster started with `ray start --head`.

Tests marked ``ray`` start Ray (the session's instance, or a cluster of their own; 2 CPUs,
loopback); the others need Ray installed but start nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import bertrt
from bertrt.batcher import BatcherOptions
from bertrt.errors import ConfigError
from bertrt.serve import ServeConfig

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
yaml = pytest.importorskip("yaml")
from ray_processes import MARKER, processes_marked, stop  # noqa: E402
from ray_serving import RayApp  # noqa: E402
from serving import wait_until_ready  # noqa: E402

from bertrt.serve.ray_app import app_builder, build_application  # noqa: E402
from bertrt.serve.ray_engine import APP_NAME, RayServeOptions, resolve_config  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The qa head")
CONTEXT = "paris is the capital of france. the immune system is a body system which has cells."
# Every wait is bounded: a Ray test fails, it never hangs.
DEADLINE_S = 180


@pytest.fixture(scope="module")
def config(tiny_bundle: Path) -> ServeConfig:
    return ServeConfig(models=tiny_bundle, device=bertrt.Device.CPU)


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> bertrt.Bundle:
    return bertrt.load(tiny_bundle, device="cpu")


def run_cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from bertrt.cli import app

    return CliRunner().invoke(app, ["serve", *args])


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def batch_runs(url: str, task: str, **client: Any) -> float:
    """Model runs of ``task`` so far, from the app's ``/metrics`` (``client``: httpx options)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10, **client).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "bertrt_batch_size_count" and sample.labels.get("task") == task
    )


def queue_depth(url: str, task: str) -> float:
    """Requests of ``task`` the ingress is waiting on, from ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bertrt_queue_depth" and sample.labels.get("task") == task:
                return sample.value
    return 0.0


def wait_for_depth(url: str, task: str, depth: int) -> None:
    deadline = time.monotonic() + 30
    while queue_depth(url, task) < depth:
        assert time.monotonic() < deadline, f"the ingress never held {depth} {task} request(s)"
        time.sleep(0.02)


# --- the command line and its serve.yaml (Ray installed, not started) ----------------------


def test_without_ray_the_engine_says_what_to_install(tiny_bundle: Path) -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if the ray extra were not installed
        "from bertrt.cli import main\n"
        f"sys.argv = ['bertrt', 'serve', '--engine', 'ray', '--models', {str(tiny_bundle)!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "error: --engine ray needs Ray Serve, which is not installed; pip install 'bertrt[ray]'.\n"


def test_print_config_writes_a_serve_config_of_the_options(tiny_bundle: Path, monkeypatch: Any) -> None:
    from ray.serve.schema import ServeDeploySchema

    monkeypatch.chdir(tiny_bundle.parent)
    options = ["--engine", "ray", "--print-config", "--models", tiny_bundle.name, "--device", "cpu"]
    options += ["--task", "classify", "--task", "qa", "--host", "0.0.0.0", "--port", "9123"]
    options += ["--replicas", "2", "--replica-cpus", "0.5", "--max-batch-size", "8", "--max-wait-ms", "5"]
    options += ["--max-queue", "50", "--model-name", "m"]
    result = run_cli(*options)
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(result.stdout)
    ServeDeploySchema.model_validate(document)
    assert document["http_options"] == {"host": "0.0.0.0", "port": 9123}
    [application] = document["applications"]
    assert application["import_path"] == "bertrt.serve.ray_app:app_builder" and application["route_prefix"] == "/"
    served = application["args"]["config"]
    # Nodes do not share this working directory: the bundle path is absolute.
    assert served["models"] == str(tiny_bundle.resolve()) and served["tasks"] == ["classify", "qa"]
    assert served["model_name"] == "m" and "batching" not in served and "port" not in served
    deployments = {d.pop("name"): d for d in application["deployments"]}
    assert list(deployments) == ["classify", "qa", "ingress"]
    for task in ("classify", "qa"):
        assert deployments[task] == {
            "num_replicas": 2,
            "max_ongoing_requests": 16,
            "max_queued_requests": 50,
            "user_config": {"max_batch_size": 8, "batch_wait_timeout_s": 0.005},
            "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.0},
        }
    assert deployments["ingress"]["ray_actor_options"] == {"num_cpus": 0.0}
    # The file's builder makes the same app from those args.
    assert app_builder(application["args"]) is not None


def test_max_replicas_turns_on_autoscaling(tiny_bundle: Path) -> None:
    result = run_cli("--engine", "ray", "--print-config", "--models", str(tiny_bundle), "--task", "embed")
    assert yaml.safe_load(result.stdout)["applications"][0]["deployments"][0]["num_replicas"] == 1
    result = run_cli(
        "--engine", "ray", "--print-config", "--models", str(tiny_bundle), "--task", "embed",
        "--replicas", "1", "--max-replicas", "4", "--max-batch-size", "16",
    )  # fmt: skip
    embed = yaml.safe_load(result.stdout)["applications"][0]["deployments"][0]
    assert "num_replicas" not in embed
    assert embed["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16}


def test_batches_that_could_never_fill_are_refused_when_the_app_is_built(
    tiny_bundle: Path, config: ServeConfig
) -> None:
    result = run_cli(
        "--engine", "ray", "--print-config", "--models", str(tiny_bundle),
        "--max-batch-size", "64", "--max-ongoing-requests", "32",
    )  # fmt: skip
    assert result.exit_code == 2 and result.stdout == ""
    assert "max_ongoing_requests (32) is less than max_batch_size (64)" in result.stderr
    with pytest.raises(ConfigError, match="never holds enough requests to fill a batch"):
        build_application(resolve_config(config), RayServeOptions(max_ongoing_requests=4))


def test_print_config_never_writes_api_keys(tiny_bundle: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("BERTRT_API_KEYS", raising=False)
    result = run_cli("--engine", "ray", "--print-config", "--models", str(tiny_bundle), "--api-key", "k-secret-1")
    assert result.exit_code == 2 and result.stdout == "" and "k-secret-1" not in result.stderr
    assert "does not write API keys into serve.yaml" in result.stderr and "--api-key-file" in result.stderr


def test_print_config_carries_the_key_file_and_tls(
    tiny_bundle: Path, certificate: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.delenv("BERTRT_API_KEYS", raising=False)
    _, cert, key = certificate
    (tmp_path / "keys.txt").write_text("k-file-1\n")
    monkeypatch.chdir(tmp_path)
    result = run_cli(
        "--engine", "ray", "--print-config", "--models", str(tiny_bundle), "--api-key-file", "keys.txt",
        "--metrics-public", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(result.stdout)
    # Ray Serve's HTTP proxies serve HTTPS with the same files as uvicorn.
    assert document["http_options"] == {
        "host": "127.0.0.1", "port": 8000, "ssl_certfile": str(cert), "ssl_keyfile": str(key),
    }  # fmt: skip
    served = document["applications"][0]["args"]["config"]
    assert served["api_key_file"] == str(tmp_path / "keys.txt") and served["metrics_public"] is True
    assert "k-file-1" not in result.stdout


def test_a_ray_instance_of_the_commands_own_shares_its_cpus_among_the_replicas() -> None:
    from bertrt.serve.ray_run import _fit_this_machine

    # Three tasks of two replicas on 2 CPUs: a third of a CPU each (one ONNX Runtime thread).
    assert _fit_this_machine(RayServeOptions(replicas=2), tasks=3, cpus=2.0).replica_cpus == 0.33
    assert _fit_this_machine(RayServeOptions(replica_cpus=0.5), tasks=3, cpus=2.0).replica_cpus == 0.5
    with pytest.raises(ConfigError, match="need 3 CPUs but this machine's Ray instance has 2"):
        _fit_this_machine(RayServeOptions(replica_cpus=1), tasks=3, cpus=2.0)


@pytest.mark.parametrize(
    "options, phrase",
    [
        (["--replicas", "2"], "Only --engine ray takes --replicas"),
        (["--print-config", "--address", "auto"], "Only --engine ray takes --address, --print-config"),
        (["--engine", "ray", "--workers", "2"], "Only --engine uvicorn takes --workers"),
        (["--engine", "ray", "--intra-op-threads", "2"], "--replica-cpus (each replica's threads)"),
        (["--engine", "ray", "--replica-gpus", "1", "--device", "cpu", "--print-config"], "--replica-gpus"),
    ],
)
def test_options_of_the_other_engine_are_refused(tiny_bundle: Path, options: list[str], phrase: str) -> None:
    result = run_cli("--models", str(tiny_bundle), *options)
    assert result.exit_code == 2 and phrase in result.stderr and result.stdout == ""


# --- the ingress's errors, through the app, with a stand-in for a deployment handle ------


class FakeDeployment:
    """A stand-in for a task deployment's handle: ``describe`` answers, ``run`` raises each
    of ``failures`` in turn, then replies with ``results``."""

    def __init__(self, failures: list[BaseException], results: list[Any]) -> None:
        self.failures = list(failures)
        self.results = results
        self.calls = 0
        self.run = self._Method(self._run)
        self.describe = self._Method(self._describe)

    class _Method:
        def __init__(self, body: Any) -> None:
            self.remote = body

    async def _run(self, inputs: list[Any], options: dict[str, Any]) -> Any:
        from bertrt.serve.ray_engine import Reply

        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return Reply(self.results)

    async def _describe(self) -> Any:
        from bertrt.serve.ray_engine import ReplicaInfo

        return ReplicaInfo("classify", "r1", "node", "CPUExecutionProvider", 1, 32, 0.002, 0, "tiny", None)


def post_through_ray_host(config: ServeConfig, deployment: FakeDeployment, body: dict[str, Any]) -> Any:
    """POST /classify to the app over a RayHost whose classify deployment is ``deployment``."""
    from bertrt.serve.app import create_app
    from bertrt.serve.metrics import ServeMetrics
    from bertrt.serve.ray_host import RayHost

    served = replace(config, tasks=(bertrt.Task.CLASSIFY,), model_name="tiny")
    metrics = ServeMetrics()
    host = RayHost(served, {bertrt.Task.CLASSIFY: deployment}, metrics)

    async def send() -> Any:
        host.start()
        while not host.ready:
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=create_app(served, host=host, metrics=metrics))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post("/classify", json=body)

    try:
        return asyncio.run(send())
    finally:
        host.close()


def test_a_lost_replica_is_retried_on_another(config: ServeConfig, bundle: bertrt.Bundle, monkeypatch: Any) -> None:
    from ray.exceptions import ActorDiedError

    from bertrt.serve import ray_host

    monkeypatch.setattr(ray_host, "RETRY_DELAY_S", 0.01)
    results = bundle.classifier("a")
    deployment = FakeDeployment([ActorDiedError()], results)
    response = post_through_ray_host(config, deployment, {"texts": "a"})
    assert response.status_code == 200 and deployment.calls == 2
    assert response.json()["results"] == [r.to_dict() for r in results]


def test_replicas_lost_past_the_retries_get_a_clean_503(config: ServeConfig, monkeypatch: Any) -> None:
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from bertrt.serve import ray_host

    monkeypatch.setattr(ray_host, "RETRY_DELAY_S", 0.01)
    deployment = FakeDeployment([ActorDiedError(), ActorUnavailableError("gone", None)] * 5, [])
    response = post_through_ray_host(config, deployment, {"texts": "a"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "not_ready" and "retry shortly" in response.json()["error"]["message"]
    assert deployment.calls == ray_host.RETRIES + 1


def test_a_replicas_refusal_and_a_full_queue_keep_their_status(config: ServeConfig) -> None:
    from ray.exceptions import RayTaskError
    from ray.serve.exceptions import BackPressureError

    from bertrt.errors import InputError

    refused = RayTaskError("run", "Traceback ...", InputError("Text #0 is too long; shorten it.")).as_instanceof_cause()
    response = post_through_ray_host(config, FakeDeployment([refused], []), {"texts": "a"})
    # The replica's own error, as itself: no Ray traceback in the message.
    assert response.status_code == 422
    assert response.json()["error"] == {"type": "invalid_input", "message": "Text #0 is too long; shorten it."}
    full = BackPressureError(num_queued_requests=4, max_queued_requests=4)
    response = post_through_ray_host(config, FakeDeployment([full], []), {"texts": "a"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "overloaded"


# --- on the session's Ray instance ---------------------------------------------------------


@pytest.mark.ray
def test_onnx_runtime_threads_follow_the_replica_cpus(ray_serve: str, config: ServeConfig) -> None:
    # Two CPUs: not the one thread `bertrt serve` would give ONNX Runtime on this machine.
    classify = replace(config, tasks=(bertrt.Task.CLASSIFY,))
    with RayApp(ray_serve, classify, RayServeOptions(replica_cpus=2)) as app:
        info = app.handle("classify").describe.remote().result(timeout_s=60)
    assert info.intra_op_threads == 2 and info.provider == "CPUExecutionProvider"


def classify_concurrently(url: str, texts: list[str], expected: list[Any], **client: Any) -> None:
    """One single-text request per text, all at once; each must get the library's answer."""
    with httpx.Client(base_url=url, timeout=60, **client) as http, ThreadPoolExecutor(len(texts)) as pool:
        responses = list(pool.map(lambda text: http.post("/classify", json={"texts": text}), texts))
    assert [r.json()["results"][0] for r in responses] == expected


@pytest.mark.ray
def test_batching_options_reach_the_replicas(ray_serve: str, config: ServeConfig, bundle: bertrt.Bundle) -> None:
    texts = [f"text number {i}" for i in range(8)]
    expected = [r.to_dict() for r in bundle.classifier(texts)]
    for batching in (BatcherOptions(max_batch_size=1), BatcherOptions(max_batch_size=8, max_wait_ms=300)):
        classify = replace(config, tasks=(bertrt.Task.CLASSIFY,), batching=batching)
        with RayApp(ray_serve, classify) as app:
            info = app.handle("classify").describe.remote().result(timeout_s=60)
            assert (info.max_batch_size, info.batch_wait_timeout_s) == (
                batching.max_batch_size,
                batching.max_wait_ms / 1000,
            )
            runs = batch_runs(app.url, "classify")
            classify_concurrently(app.url, texts, expected)
            runs = batch_runs(app.url, "classify") - runs
        if batching.max_batch_size == 1:
            assert runs == len(texts), "max_batch_size 1: one request per model run"
        else:
            assert runs < len(texts), "concurrent requests should share model runs"


@pytest.mark.ray
def test_an_api_key_is_required_on_ray_too(ray_serve: str, config: ServeConfig, bundle: bertrt.Bundle) -> None:
    keyed = replace(config, tasks=(bertrt.Task.CLASSIFY,), api_keys=("k-ray-1",))
    with RayApp(ray_serve, keyed) as app, httpx.Client(base_url=app.url, timeout=60) as http:
        refused = http.post("/classify", json={"texts": "i love paris"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["type"] == "unauthorized"
        wrong = http.post("/classify", json={"texts": "x"}, headers={"Authorization": "Bearer k-ray-2"})
        assert wrong.status_code == 401
        assert http.get("/metrics").status_code == 401 and http.get("/health").status_code == 200
        answer = http.post("/classify", json={"texts": "i love paris"}, headers={"Authorization": "Bearer k-ray-1"})
        assert answer.json()["results"] == [r.to_dict() for r in bundle.classifier(["i love paris"])]
        # Refused requests never reach a task replica: it took the one with the key only.
        info = app.handle("classify").describe.remote().result(timeout_s=60)
        assert info.calls == 1


@pytest.mark.ray
def test_a_full_queue_answers_503_with_retry_after(ray_serve: str, config: ServeConfig) -> None:
    # One request at a time per replica and one waiting: a third is refused while the first,
    # long one (many windows of long contexts) runs.
    tight = replace(config, tasks=(bertrt.Task.QA,), batching=BatcherOptions(max_batch_size=1, max_queue=1))
    long_contexts = {"question": ["what has cells?"] * 40, "context": [CONTEXT * 1000] * 40}
    options = RayServeOptions(replica_cpus=1, max_ongoing_requests=1)
    with (
        RayApp(ray_serve, tight, options) as app,
        httpx.Client(base_url=app.url, timeout=DEADLINE_S) as http,
        ThreadPoolExecutor(2) as pool,
    ):
        first = pool.submit(http.post, "/qa", json=long_contexts)
        wait_for_depth(app.url, "qa", 1)
        second = pool.submit(http.post, "/qa", json={"question": "q", "context": "c"})
        wait_for_depth(app.url, "qa", 2)
        refused = http.post("/qa", json={"question": "q", "context": "c"})
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert http.post("/classify", json={"texts": "x"}).status_code == 404
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["type"] == "overloaded" and "max_queued_requests" in error["message"]


@pytest.mark.ray
def test_the_command_joins_a_running_cluster_and_takes_its_app_down(
    ray_serve: str, ray_session: Any, tiny_bundle: Path, bundle: bertrt.Bundle
) -> None:
    from ray import serve

    port = ray_serve.rsplit(":", 1)[1]
    command = [sys.executable, "-m", "bertrt", "serve", "--engine", "ray", "--address", "auto"]
    command += ["--models", str(tiny_bundle), "--device", "cpu", "--task", "classify", "--port", port]
    command += ["--replicas", "2", "--replica-cpus", "0.5"]
    # `auto` finds the cluster through $RAY_ADDRESS: the session's, never another on this machine.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until_ready(ray_serve, timeout=DEADLINE_S)
        answer = httpx.post(f"{ray_serve}/classify", json={"texts": "i love paris"}, timeout=60)
        assert answer.json()["results"] == [r.to_dict() for r in bundle.classifier(["i love paris"])]
        deadline = time.monotonic() + DEADLINE_S
        while serve.status().applications[APP_NAME].deployments["classify"].replica_states.get("RUNNING") != 2:
            assert time.monotonic() < deadline, "--replicas 2 never ran two replicas"
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
            serve.delete(APP_NAME)
    assert process.returncode == 0, stderr
    assert "Serving classify on Ray Serve at http://127.0.0.1:" in stderr and "Stopping" in stderr
    assert APP_NAME not in serve.status().applications, "the command must take its app down"


# --- `serve deploy` on a cluster of `ray start --head` -------------------------------------


@pytest.fixture
def head_node() -> Iterator[dict[str, Any]]:
    """A one-node cluster from `ray start --head` (2 CPUs, loopback, a temp folder and auth
    token of its own); the environment and dashboard address to reach it. Every process it
    started is stopped at the end (by process id: `ray stop` would end other clusters too)."""
    gcs, dashboard, client, agent = free_ports(4)
    # Short: Ray's socket paths under it must stay within 107 characters.
    temp = tempfile.mkdtemp(prefix="brt-head-", dir="/tmp")
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "RAY_TMPDIR": temp,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        MARKER: token,
    }
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--num-cpus", "2"]
    command += ["--node-ip-address", "127.0.0.1", "--port", str(gcs), "--temp-dir", f"{temp}/ray"]
    # `serve deploy` talks to the dashboard's REST API, so this cluster runs one (loopback only).
    command += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)]
    command += ["--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent)]
    command += ["--min-worker-port", "0", "--max-worker-port", "0", "--block"]
    log = Path(temp) / "ray-start.log"
    with log.open("w") as output:
        head = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + DEADLINE_S
        while not _answers(f"{address}/api/version"):
            assert head.poll() is None, f"ray start --head exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the head node's dashboard never answered"
            time.sleep(0.5)
        yield {"env": env, "dashboard": address, "gcs": f"127.0.0.1:{gcs}"}
    finally:
        left = stop(processes_marked(token))
        head.wait(30)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes outlived the test: {left}"


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (with any status: Ray's token guards it)."""
    try:
        httpx.get(url, timeout=2)
    except httpx.TransportError:
        return False
    return True


# Asks the classify replica of a cluster's bertrt app to describe itself (a driver of its own:
# this test process may already belong to the session's Ray instance).
DESCRIBE = """
import json, sys
import ray
from ray import serve
ray.init(address=sys.argv[1], log_to_driver=False)
info = serve.get_deployment_handle("classify", app_name="bertrt").describe.remote().result(timeout_s=60)
print("INFO " + json.dumps({"replica": info.replica, "max_batch_size": info.max_batch_size}))
"""


def describe_classify(head: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", DESCRIBE, head["gcs"]], capture_output=True, text=True, env=head["env"], timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("INFO ")]
    info: dict[str, Any] = json.loads(line.removeprefix("INFO "))
    return info


@pytest.mark.ray
def test_print_config_deploys_with_serve_deploy_and_batching_changes_in_place(
    head_node: dict[str, Any],
    tiny_bundle: Path,
    tmp_path: Path,
    bundle: bertrt.Bundle,
    certificate: tuple[Path, Path, Path],
) -> None:
    # Served as a real deployment would be: HTTPS, and an API key file the ingress reads.
    authority, cert, key = certificate
    keys = tmp_path / "keys.txt"
    keys.write_text("k-deploy-1\n")
    [port] = free_ports(1)
    options = ["--engine", "ray", "--print-config", "--models", str(tiny_bundle), "--device", "cpu"]
    options += ["--port", str(port), "--replica-cpus", "0.5", "--max-batch-size", "1", "--api-key-file", str(keys)]
    options += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    env = {name: value for name, value in os.environ.items() if name != "BERTRT_API_KEYS"}
    printed = subprocess.run(
        [sys.executable, "-m", "bertrt", "serve", *options], capture_output=True, text=True, env=env
    )
    assert printed.returncode == 0, printed.stderr
    serve_yaml = tmp_path / "serve.yaml"
    serve_yaml.write_text(printed.stdout)
    deploy = [sys.executable, "-m", "ray.serve.scripts", "deploy", str(serve_yaml), "--address", head_node["dashboard"]]

    def serve_deploy() -> None:
        done = subprocess.run(deploy, capture_output=True, text=True, env=head_node["env"], timeout=DEADLINE_S)
        assert done.returncode == 0, done.stderr[-3000:]

    serve_deploy()
    url = f"https://127.0.0.1:{port}"
    trusted = ssl.create_default_context(cafile=str(authority))
    wait_until_ready(url, timeout=DEADLINE_S, verify=trusted)
    texts = [f"text number {i}" for i in range(8)]
    expected = [r.to_dict() for r in bundle.classifier(texts)]
    key_header = {"Authorization": "Bearer k-deploy-1"}
    with httpx.Client(base_url=url, timeout=60, verify=trusted, headers=key_header) as http:
        assert http.get("/health").json()["tasks"] == ["embed", "classify", "qa"]
        answer = http.post("/classify", json={"texts": ["i love paris", "a"], "top_k": 2})
        assert answer.json()["results"] == [r.to_dict() for r in bundle.classifier(["i love paris", "a"], top_k=2)]
        qa = http.post("/qa", json={"question": "what has cells?", "context": CONTEXT})
        assert qa.json()["results"] == [bundle.qa.answer("what has cells?", CONTEXT).to_dict()]
    without_key = httpx.post(f"{url}/classify", json={"texts": "a"}, verify=trusted, timeout=60)
    assert without_key.status_code == 401 and without_key.json()["error"]["type"] == "unauthorized"
    before = describe_classify(head_node)
    assert before["max_batch_size"] == 1
    metrics = {"verify": trusted, "headers": key_header}
    runs = batch_runs(url, "classify", **metrics)
    classify_concurrently(url, texts, expected, **metrics)
    assert batch_runs(url, "classify", **metrics) - runs == len(texts), "max_batch_size 1: one request per model run"

    # New batching in the file, deployed again: the running replica takes it, no restart.
    document = yaml.safe_load(serve_yaml.read_text())
    [classify] = [d for d in document["applications"][0]["deployments"] if d["name"] == "classify"]
    classify["user_config"] = {"max_batch_size": 8, "batch_wait_timeout_s": 0.3}
    classify["max_ongoing_requests"] = 16
    serve_yaml.write_text(yaml.safe_dump(document))
    serve_deploy()
    deadline = time.monotonic() + DEADLINE_S
    while (after := describe_classify(head_node))["max_batch_size"] != 8:
        assert time.monotonic() < deadline, "the new user_config never reached the replica"
        time.sleep(1)
    assert after["replica"] == before["replica"], "a batching change must not restart the replica"
    runs = batch_runs(url, "classify", **metrics)
    classify_concurrently(url, texts, expected, **metrics)
    assert batch_runs(url, "classify", **metrics) - runs < len(texts), "concurrent requests should share model runs"
