"""Serving beyond localhost: API keys (flags, environment, a key file reread while serving,
with one worker or several), the OpenAI client's Bearer token, TLS with a self-signed
certificate, the warning for an exposed server without keys, and keys kept out of logs."""

from __future__ import annotations

import base64
import hmac
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bertrt
from bertrt.errors import ConfigError
from bertrt.serve import ServeConfig
from bertrt.serve.config import is_loopback
from bertrt.serve.keys import ApiKeys, keys_from_text, read_key_file

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
from serving import ServeProcess, ServerThread, wait_until_ready  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The qa head")
KEYS = ("key-one_A", "key-two_B")
FILE_KEY = "file-key_C"
WRONG_KEY = "wrong-key_Z"
EVERY_KEY = (*KEYS, FILE_KEY, WRONG_KEY)
CONTEXT = "paris is the capital of france. the immune system is a body system which has cells."
# Every endpoint that wants a key, with a request it answers 200 to.
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("POST", "/embed", {"texts": ["i love paris"]}),
    ("POST", "/classify", {"texts": "i love paris"}),
    ("POST", "/qa", {"question": "what has cells?", "context": CONTEXT}),
    ("POST", "/v1/embeddings", {"input": "i love paris", "model": "tiny"}),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
]
# What the OpenAI Python client (3.57) sends with `embeddings.create`, header for header.
OPENAI_HEADERS = {
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
    "authorization": "Bearer {key}",
    "accept": "application/json",
    "content-type": "application/json",
    "user-agent": "OpenAI/Python 3.57.0",
    "x-stainless-lang": "python",
    "x-stainless-package-version": "3.57.0",
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "CPython",
    "x-stainless-runtime-version": "3.11.7",
    "x-stainless-async": "false",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
}
OPENAI_BODY = b'{"model":"tiny","input":["hello","i love paris"],"encoding_format":"base64"}'


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def write_keys(path: Path, *keys: str) -> Path:
    """Replace ``path`` at once (a new file renamed over it), as a deployment tool should."""
    staging = path.with_suffix(".new")
    staging.write_text("# bertrt API keys\n\n" + "".join(f"{key}\n" for key in keys))
    staging.replace(path)
    return path


def rewrite_in_place(path: Path, *keys: str) -> None:
    """Rewrite ``path`` keeping its inode, size and modification time, so that only a
    signal can tell a server that it changed."""
    before = path.stat()
    text = "# bertrt API keys\n\n" + "".join(f"{key}\n" for key in keys)
    assert len(text) == before.st_size, "the new keys must have the old ones' length"
    with path.open("r+") as file:
        file.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def eventually(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    """Poll ``check`` until it holds; past ``timeout``, fail with ``what`` and the tail of ``log``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            tail = "\n".join(log.read_text().splitlines()[-60:]) if log is not None else ""
            pytest.fail(f"{what} within {timeout} s\n{tail}")
        time.sleep(0.1)


def status_with(url: str, key: str, path: str = "/classify", **client: Any) -> int:
    """One request on a new connection (so that, with several workers, any of them may answer)."""
    return httpx.post(f"{url}{path}", json={"texts": "x"}, headers=bearer(key), timeout=30, **client).status_code


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_keys(tmp_path_factory.mktemp("keys") / "keys.txt", FILE_KEY)


@pytest.fixture(scope="module")
def config(tiny_bundle: Path, key_file: Path) -> ServeConfig:
    return ServeConfig(models=tiny_bundle, device=bertrt.Device.CPU, api_keys=KEYS, api_key_file=key_file)


@pytest.fixture(scope="module")
def server(config: ServeConfig) -> Iterator[ServerThread]:
    with ServerThread(config) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: ServerThread) -> Iterator[Any]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> bertrt.Bundle:
    return bertrt.load(tiny_bundle, device="cpu")


# --- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "data"), ENDPOINTS)
def test_no_key_or_a_wrong_key_is_401_and_counted(http: Any, method: str, path: str, data: Any) -> None:
    before = http.get("/metrics", headers=bearer(KEYS[0])).text
    attempts = {
        "missing": ({}, "Bearer"),
        "wrong": (bearer(WRONG_KEY), 'Bearer error="invalid_token"'),
        "not Bearer": ({"Authorization": f"Basic {KEYS[0]}"}, "Bearer"),
        "no scheme": ({"Authorization": KEYS[0]}, "Bearer"),
    }
    for name, (headers, challenge) in attempts.items():
        response = http.request(method, path, json=data, headers=headers)
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"] == challenge, name
        error = response.json()["error"]
        assert error["type"] == "unauthorized" and "Authorization: Bearer KEY" in error["message"], name
        assert not any(key in response.text for key in EVERY_KEY)
    after = http.get("/metrics", headers=bearer(KEYS[0])).text

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("bertrt_request_errors_total", endpoint=path, reason="unauthorized") == len(attempts)
    assert grew("bertrt_requests_total", endpoint=path, code="401") == len(attempts)


def test_an_unknown_path_without_a_key_is_401_not_404(http: Any) -> None:
    # Callers without a key learn nothing about the routes.
    assert http.get("/admin").status_code == 401
    assert http.get("/admin", headers=bearer(KEYS[1])).status_code == 404


@pytest.mark.parametrize("key", [*KEYS, FILE_KEY])
def test_any_configured_key_is_200_everywhere(http: Any, key: str) -> None:
    for method, path, data in ENDPOINTS:
        response = http.request(method, path, json=data, headers=bearer(key))
        assert response.status_code == 200, (path, response.text)
    # The scheme is case-insensitive (RFC 7235).
    assert http.post("/embed", json={"texts": "x"}, headers={"Authorization": f"bearer {key}"}).status_code == 200


def test_health_stays_open(http: Any) -> None:
    response = http.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ready"
    assert http.get("/health", headers=bearer(WRONG_KEY)).status_code == 200


def test_metrics_are_closed_by_default_and_open_with_metrics_public(http: Any, config: ServeConfig) -> None:
    assert http.get("/metrics").status_code == 401
    with ServerThread(replace(config, metrics_public=True)) as public, httpx.Client(base_url=public.url) as client:
        scrape = client.get("/metrics")
        assert scrape.status_code == 200 and "bertrt_ready 1.0" in scrape.text
        assert client.post("/embed", json={"texts": "x"}).status_code == 401


def test_a_request_without_a_key_is_refused_before_its_body_is_read(http: Any) -> None:
    big = b'{"texts": "' + b"a" * 9_000_000 + b'"}'  # over the 8 MiB limit: 413 with a key
    refused = http.post("/embed", content=big, headers={"Content-Type": "application/json"})
    assert refused.status_code == 401
    allowed = http.post("/embed", content=big, headers={"Content-Type": "application/json", **bearer(KEYS[0])})
    assert allowed.status_code == 413


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ApiKeys(["first-key", "second-key", "third-key"])
    compared: list[tuple[int, int]] = []
    real_compare = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare)
    for presented, expected in [(b"first-key", True), (b"third-key", True), (b"f", False), (b"x" * 10_000, False)]:
        compared.clear()
        assert keys.accepts(presented) is expected
        # Every key is compared, match or not, and always digest against digest.
        assert compared == [(32, 32)] * 3


def test_a_raw_request_shaped_like_the_openai_clients(http: Any, bundle: bertrt.Bundle) -> None:
    headers = {**OPENAI_HEADERS, "authorization": f"Bearer {KEYS[1]}"}
    response = http.post("/v1/embeddings", content=OPENAI_BODY, headers=headers)
    assert response.status_code == 200
    vectors = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in response.json()["data"]]
    expected = bundle.embedder(["hello", "i love paris"], pooling="mean", normalize=True)
    for vector, want in zip(vectors, expected, strict=True):
        np.testing.assert_allclose(vector, want.vector, rtol=1e-5, atol=1e-6)
    wrong = http.post("/v1/embeddings", content=OPENAI_BODY, headers={**headers, "authorization": "Bearer sk-x"})
    assert wrong.status_code == 401


def test_the_openai_client(server: ServerThread, bundle: bertrt.Bundle) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(api_key=FILE_KEY, base_url=f"{server.url}/v1", max_retries=0, timeout=30)
    created = client.embeddings.create(model="tiny", input=["hello", "i love paris"])
    expected = bundle.embedder(["hello", "i love paris"], pooling="mean", normalize=True)
    for item, want in zip(created.data, expected, strict=True):
        np.testing.assert_allclose(item.embedding, want.vector, rtol=1e-5, atol=1e-6)
    assert created.model == "tiny" and created.usage.prompt_tokens == sum(len(e.tokens) for e in expected)
    wrong = openai.OpenAI(api_key=WRONG_KEY, base_url=f"{server.url}/v1", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.embeddings.create(model="tiny", input="hello")
    assert refused.value.status_code == 401


# --- the key file -------------------------------------------------------------------------


def test_a_changed_key_file_is_reread_and_a_broken_one_keeps_the_keys(
    tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_keys(tmp_path / "keys.txt", "old-key")
    config = ServeConfig(models=tiny_bundle, device=bertrt.Device.CPU, tasks=(bertrt.Task.CLASSIFY,), api_key_file=path)
    with ServerThread(config) as server, caplog.at_level("INFO", logger="bertrt.serve"):
        assert status_with(server.url, "old-key") == 200 and status_with(server.url, "new-key") == 401
        write_keys(path, "new-key", "other-key")
        eventually(lambda: status_with(server.url, "new-key") == 200, 10, "the new key was not accepted")
        assert status_with(server.url, "old-key") == 401 and status_with(server.url, "other-key") == 200
        assert f"Read 2 API key(s) from {path}." in caplog.messages
        for broken in ("# only a comment\n", "a key with spaces\n"):
            caplog.clear()
            path.with_suffix(".new").write_text(broken)
            path.with_suffix(".new").replace(path)
            # Requests look at the file; each finds the previous keys still in force.
            eventually(
                lambda: status_with(server.url, "new-key") == 200 and "Keeping the previous API keys" in caplog.text,
                10,
                "the broken file was not noticed",
            )
        path.unlink()
        time.sleep(1.2)
        assert status_with(server.url, "new-key") == 200, "a missing file must not lock every caller out"
    assert "does not exist" in caplog.text and "new-key" not in caplog.text


def test_sighup_rereads_the_key_file_and_no_key_reaches_the_log(tiny_bundle: Path, tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.txt", "file-key_1")
    args = ["--models", str(tiny_bundle), "--device", "cpu", "--task", "classify", "--api-key", KEYS[0]]
    args += ["--api-key-file", str(path), "--log-level", "trace", "--access-log"]
    env = {**os.environ, "BERTRT_API_KEYS": f" {KEYS[1]} ,,"}
    with ServeProcess(args, tmp_path / "server.log", env=env) as server:
        wait_until_ready(server.url)
        for key in (KEYS[0], KEYS[1], "file-key_1"):
            assert status_with(server.url, key) == 200, key
        assert status_with(server.url, WRONG_KEY) == 401
        rewrite_in_place(path, "file-key_2")
        time.sleep(1.2)  # past the change check's interval: the file looks unchanged, so it is not reread
        assert status_with(server.url, "file-key_1") == 200 and status_with(server.url, "file-key_2") == 401
        os.kill(server.pid, signal.SIGHUP)
        eventually(lambda: status_with(server.url, "file-key_2") == 200, 10, "SIGHUP did not reread the key file")
        assert status_with(server.url, "file-key_1") == 401 and status_with(server.url, KEYS[0]) == 200
        assert httpx.get(f"{server.url}/metrics", headers=bearer(KEYS[1])).status_code == 200
        code = server.stop()
    assert code in (0, -signal.SIGTERM), server.output
    assert "Read 1 API key(s)" in server.output and "POST /classify HTTP/1.1" in server.output
    assert "Traceback" not in server.output
    for secret in (*KEYS, "file-key_1", "file-key_2", WRONG_KEY):
        assert secret not in server.output


def per_worker(metrics_dir: Path, name: str, **labels: str) -> dict[str, float]:
    """A counter's value by worker process id, read from each worker's own file."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = {}
    for file in metrics_dir.glob("counter_*.db"):
        families = MultiProcessCollector.merge([str(file)])
        counts[file.stem.split("_")[1]] = sum(
            s.value for f in families for s in f.samples if s.name == name and labels.items() <= s.labels.items()
        )
    return counts


def test_every_worker_rereads_the_key_file(tiny_bundle: Path, tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.txt", "worker-key_1")
    args = ["--models", str(tiny_bundle), "--device", "cpu", "--task", "classify", "--workers", "2"]
    args += ["--intra-op-threads", "1", "--api-key-file", str(path)]
    # The metrics folder goes under $TMPDIR: here, where the test reads each worker's counts.
    env = {key: val for key, val in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"} | {"TMPDIR": str(tmp_path)}
    with ServeProcess(args, tmp_path / "server.log", env=env) as server:

        def both_ready() -> bool:
            folders = list(tmp_path.glob("bertrt-metrics-*"))
            if not folders or len(list(folders[0].glob("gauge_livemin_*.db"))) != 2:
                return False
            scrape = httpx.get(f"{server.url}/metrics", headers=bearer("worker-key_1"), timeout=10)
            return scrape.status_code == 200 and metric(scrape.text, "bertrt_ready") == 1

        eventually(lambda: _quietly(both_ready), 120, "two workers did not become ready", server.log_path)
        metrics_dir = next(tmp_path.glob("bertrt-metrics-*"))

        def served_by_both(name: str, **labels: str) -> Callable[[], bool]:
            start = per_worker(metrics_dir, name, **labels)

            def check() -> bool:
                now = per_worker(metrics_dir, name, **labels)
                return len(now) == 2 and all(now[pid] > start.get(pid, 0) for pid in now)

            return check

        # A new file, and no signal: each worker finds it changed on its own.
        write_keys(path, "worker-key_2")
        time.sleep(1.2)
        accepted = served_by_both("bertrt_requests_total", endpoint="/classify", code="200")
        refused = served_by_both("bertrt_request_errors_total", endpoint="/classify", reason="unauthorized")
        with ThreadPoolExecutor(8) as pool:
            for _ in range(20):
                new = list(pool.map(lambda _: status_with(server.url, "worker-key_2"), range(8)))
                old = list(pool.map(lambda _: status_with(server.url, "worker-key_1"), range(8)))
                assert new == [200] * 8 and old == [401] * 8
                if accepted() and refused():
                    break
        assert accepted() and refused(), "one worker answered every request"
        # SIGHUP to the main process: uvicorn replaces each worker, and the new ones read the
        # file (while it swaps them, a connection may be dropped or find models loading).
        rewrite_in_place(path, "worker-key_3")
        os.kill(server.pid, signal.SIGHUP)

        def all_take_the_newest_key() -> bool:
            with ThreadPoolExecutor(8) as pool:
                return list(pool.map(lambda _: status_with(server.url, "worker-key_3"), range(16))) == [200] * 16

        eventually(
            lambda: _quietly(all_take_the_newest_key),
            120,
            "the replaced workers did not take the newest key",
            server.log_path,
        )
        assert output_of(server).count("Received SIGHUP, restarting processes") == 1
        assert status_with(server.url, "worker-key_2") == 401
        code = server.stop()
    assert code in (0, -signal.SIGTERM), server.output
    assert "Traceback" not in server.output and "worker-key" not in server.output


def output_of(server: ServeProcess) -> str:
    return server.log_path.read_text()


def _quietly(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except httpx.TransportError:
        return False


def test_key_sources_and_their_errors_never_show_a_key(tmp_path: Path) -> None:
    assert keys_from_text(" a-key , b-key,, ", "$BERTRT_API_KEYS") == ("a-key", "b-key")
    path = _file(tmp_path / "keys", "# a comment\n\n  spaced-key  \nsecond=\n")
    assert read_key_file(path) == ("spaced-key", "second=")
    # Every bad key below holds "s3cr3t": no message may repeat it.
    failures = {
        "Key 2 of the list is not a valid API key": lambda: keys_from_text("ok,s3cr3t key", "the list"),
        "API key #2 is empty": lambda: ServeConfig(api_keys=("ok", "")),
        "API key #1 is not a valid API key": lambda: ServeConfig(api_keys=("s3cr3t-é",)),
        "does not exist; create it": lambda: ApiKeys(key_file=tmp_path / "absent"),
        "holds no key": lambda: ApiKeys(key_file=_file(tmp_path / "empty", "# none\n\n")),
        "Line 2 of .* is not a valid API key": lambda: ApiKeys(key_file=_file(tmp_path / "bad", "ok\ns3cr3t key\n")),
        "cannot be read": lambda: ApiKeys(key_file=tmp_path),
    }
    for message, make in failures.items():
        with pytest.raises(ConfigError, match=message) as error:
            make()
        assert "s3cr3t" not in str(error.value)


def _file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_config_carries_keys_and_tls_to_workers_but_not_into_its_repr(tmp_path: Path) -> None:
    config = ServeConfig(
        api_keys=KEYS,
        api_key_file=tmp_path / "keys",
        metrics_public=True,
        ssl_certfile=tmp_path / "cert.pem",
        ssl_keyfile=tmp_path / "key.pem",
    )
    assert ServeConfig.from_json(config.to_json()) == config
    assert not any(key in repr(config) for key in KEYS)
    files = {"ssl_certfile": str(tmp_path / "cert.pem"), "ssl_keyfile": str(tmp_path / "key.pem")}
    assert config.ssl_options() == files
    assert ServeConfig().ssl_options() == {} and not ServeConfig().requires_api_key
    with pytest.raises(ConfigError, match="pass --ssl-certfile and --ssl-keyfile together"):
        ServeConfig(ssl_certfile=tmp_path / "cert.pem")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("example.org", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    warning = ServeConfig(host=host).exposure_warning()
    assert (warning is None) is loopback
    assert ServeConfig(host=host, api_keys=("k",)).exposure_warning() is None


# --- the command line ---------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    """What `bertrt serve` hands to uvicorn.run (which is replaced: nothing binds)."""
    import bertrt.serve.metrics

    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: calls.append((app, options)))
    monkeypatch.setattr(bertrt.serve.metrics, "drop_created_series", lambda: None)  # process-wide otherwise
    monkeypatch.delenv("BERTRT_API_KEYS", raising=False)
    return calls


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    from typer.testing import CliRunner

    from bertrt.cli import app

    return CliRunner().invoke(app, ["serve", *args], env=env)


def test_serve_command_takes_keys_from_flags_the_environment_and_a_file(
    served: list[tuple[Any, dict[str, Any]]], tiny_bundle: Path, key_file: Path
) -> None:
    args = ["--models", str(tiny_bundle), "--device", "cpu", "--port", "0", "--api-key", KEYS[0]]
    args += ["--api-key", KEYS[1], "--api-key-file", str(key_file), "--metrics-public"]
    result = invoke(*args, env={"BERTRT_API_KEYS": "env-key_1,env-key_2"})
    assert result.exit_code == 0, result.output
    [(app, options)] = served
    config = app.state.host.config
    assert config.api_keys == (*KEYS, "env-key_1", "env-key_2") and config.api_key_file == key_file
    assert config.metrics_public and len(app.state.api_keys) == 5
    assert "ssl_certfile" not in options and "warning" not in result.stderr


def test_an_exposed_server_without_keys_prints_one_warning(
    served: list[tuple[Any, dict[str, Any]]], tiny_bundle: Path
) -> None:
    common = ["--models", str(tiny_bundle), "--device", "cpu", "--port", "0"]
    exposed = invoke(*common, "--host", "0.0.0.0")
    assert exposed.exit_code == 0, exposed.output
    assert exposed.stderr.count("\n") == 1 and exposed.stderr.startswith("warning: Serving on 0.0.0.0 without")
    assert served[-1][1]["host"] == "0.0.0.0"
    for args in (["--host", "0.0.0.0", "--api-key", KEYS[0]], ["--host", "::1"], []):
        quiet = invoke(*common, *args)
        assert quiet.exit_code == 0 and quiet.stderr == "", args
    assert invoke(*common, "--host", "0.0.0.0", env={"BERTRT_API_KEYS": KEYS[0]}).stderr == ""


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--api-key", "s3cr3t key"], {}, "--api-key #1 is not a valid API key: a key holds letters"),
        ([], {"BERTRT_API_KEYS": "ok,s3cr3t key"}, "Key 2 of $BERTRT_API_KEYS is not a valid API key"),
        (["--api-key-file", "{tmp}/absent"], {}, "absent does not exist; create it with one key per line"),
        (["--ssl-certfile", "{tmp}/cert.pem"], {}, "pass --ssl-certfile and --ssl-keyfile together"),
        (["--ssl-certfile", "{tmp}/x.pem", "--ssl-keyfile", "{tmp}/x.pem"], {}, "x.pem cannot be loaded"),
    ],
)
def test_serve_command_refuses_bad_keys_and_tls_files_in_one_line(
    served: list[tuple[Any, dict[str, Any]]],
    tiny_bundle: Path,
    tmp_path: Path,
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    (tmp_path / "x.pem").write_text("not a certificate\n")
    args = [arg.format(tmp=tmp_path) for arg in args]
    result = invoke("--models", str(tiny_bundle), "--port", "0", *args, env=env)
    assert result.exit_code == 2 and served == []
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and message in result.stderr
    assert "s3cr3t" not in result.stderr


# --- TLS ----------------------------------------------------------------------------------


def test_https_with_a_self_signed_certificate(
    tiny_bundle: Path, tmp_path: Path, certificate: tuple[Path, Path, Path], bundle: bertrt.Bundle
) -> None:
    authority, cert, key = certificate
    trusted = ssl.create_default_context(cafile=str(authority))
    args = ["--models", str(tiny_bundle), "--device", "cpu", "--task", "embed", "--api-key", KEYS[0]]
    args += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    with ServeProcess(args, tmp_path / "server.log", scheme="https") as server:
        wait_until_ready(server.url, verify=trusted)
        plain_url = server.url.replace("https://", "http://")
        with httpx.Client(base_url=server.url, verify=trusted, timeout=30) as https:
            response = https.post("/embed", json={"texts": "i love paris"}, headers=bearer(KEYS[0]))
            assert response.status_code == 200
            expected = bundle.embedder("i love paris")[0].vector
            np.testing.assert_allclose(response.json()["results"][0]["vector"], expected, rtol=1e-5, atol=1e-6)
            assert https.post("/embed", json={"texts": "x"}).status_code == 401
            # Plain HTTP to the TLS port: the connection fails at once, and the server carries on.
            started = time.monotonic()
            with pytest.raises(httpx.TransportError):
                httpx.get(f"{plain_url}/health", timeout=10)
            assert time.monotonic() - started < 5
            # A client that does not trust the certificate's authority refuses the server.
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                httpx.get(f"{server.url}/health", timeout=10)
            assert https.get("/health").json()["status"] == "ready"
        code = server.stop()
    assert code in (0, -signal.SIGTERM), server.output
    assert "Traceback" not in server.output and "Uvicorn running on https://127.0.0.1" in server.output
    assert KEYS[0] not in server.output
