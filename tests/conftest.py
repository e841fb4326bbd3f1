"""Shared fixtures: a tiny random BERT source and a full bundle exported from it.

The bundle goes through the real export pipeline (convert, validate, manifests), so every
runtime test exercises files exactly like the ones users get, in seconds instead of minutes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Property tests check correctness, not speed: no per-example deadline, which a loaded
# machine would turn into failures that say nothing about the code.
settings.register_profile("bertrt", deadline=None)
settings.load_profile("bertrt")

# No model hub in tests: everything loads from local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Ray on loopback only: Ray turns 127.0.0.1 into the machine's network address unless told
# that this is a one-machine setup (a variable named for Windows and macOS, whose Ray runs
# on loopback by default). Read when ray is first imported; Ray processes inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

REPO = Path(__file__).resolve().parent.parent
SQUAD_DIR = REPO.parent / "shared" / "data" / "squad"
REAL_BUNDLE = REPO / "models" / "minilm"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the `ray` tests last, in their usual order. Their Ray instance lives until the
    session ends, and nothing else should share the process with its threads and worker
    processes: a fork from it can inherit a lock held for ever, and its idle workers take
    cores from every test that would come after them."""
    items.sort(key=lambda item: item.get_closest_marker("ray") is not None)


def tiny_recipe_dict(source: Path, max_length: int = 64) -> dict[str, Any]:
    """A recipe over the tiny source with no training (heads keep their seeded random init)."""
    return {
        "name": "tiny",
        "max_length": max_length,
        "embedder": {"source": str(source)},
        "classifier": {"source": str(source), "finetune": False},
        "qa": {"source": str(source), "finetune": "with-data"},
        "qa.training": {},
    }


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a random tiny BertModel, its config and WordPiece tokenizer."""
    from bertrt.export.tiny import write_tiny_source

    return write_tiny_source(tmp_path_factory.mktemp("tiny-source"))


@pytest.fixture(scope="session")
def tiny_recipe(tiny_source: Path) -> Any:
    """The parsed tiny recipe (QA max_length 64 with stride 16, so long contexts make windows)."""
    from bertrt.export.recipe import recipe_from_dict

    data = tiny_recipe_dict(tiny_source)
    data.pop("qa.training")
    data["qa"]["training"] = {"max_length": 64, "doc_stride": 16}
    return recipe_from_dict(data)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_recipe: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete bundle (embedder, classifier, qa; every variant this machine can build)."""
    from bertrt.export.pipeline import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(tiny_recipe, ExportOptions(out=out, precisions=BUILT_PRECISIONS), log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def tiny_torch_models(tiny_recipe: Any, tiny_source: Path) -> dict[str, Any]:
    """The PyTorch models the tiny bundle was exported from, by task value, plus ``tokenizer``."""
    from bertrt.export.pipeline import load_source_model
    from transformers import AutoTokenizer

    from bertrt.types import Task

    models: dict[str, Any] = {
        Task.EMBED.value: load_source_model(Task.EMBED, tiny_recipe.models["embedder"]),
        Task.CLASSIFY.value: load_source_model(Task.CLASSIFY, tiny_recipe.models["classifier"]),
        Task.QA.value: load_source_model(Task.QA, tiny_recipe.models["qa"]),
    }
    models["tokenizer"] = AutoTokenizer.from_pretrained(tiny_source)
    return models


def _built_precisions() -> tuple[Any, ...]:
    from bertrt.types import Precision

    return (Precision.FP32, Precision.FP16, Precision.INT8)


BUILT_PRECISIONS = _built_precisions()


@pytest.fixture(scope="session")
def fp32_only_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle whose models have only their fp32 variant."""
    import json
    import shutil

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("fp32-only") / "tiny"))
    for manifest_path in bundle.glob("*/manifest.json"):
        manifest = json.loads(manifest_path.read_text())
        for precision in ("fp16", "int8"):
            file = manifest["variants"].pop(precision)["file"]
            manifest["files"].pop(file)
            (manifest_path.parent / file).unlink()
        manifest_path.write_text(json.dumps(manifest))
    return bundle


@pytest.fixture(scope="session")
def small_real_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real export of the packaged MiniLM on a tiny training budget (a few minutes), and
    what the export printed: 200 reviews for the classifier, 64 train40 questions for QA."""
    out = tmp_path_factory.mktemp("real") / "minilm"
    command = [
        sys.executable, "-m", "bertrt.cli", "export",
        "--out", str(out),
        "--train-size", "200", "--heldout-size", "200",
        # 64 questions are 4 optimizer steps: enough to run the QA training path for real.
        "--qa-data", str(SQUAD_DIR / "dev-v1.1.train40.json"), "--qa-max-examples", "64",
        "--qa-eval-data", str(SQUAD_DIR / "dev-v1.1.heldout8.json"), "--qa-eval-size", "40",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


@pytest.fixture(scope="session")
def real_bundle_dir(request: pytest.FixtureRequest) -> Path:
    """The exported default bundle (``BERTRT_TEST_BUNDLE`` or models/minilm) when there is
    one, else the small real export: real-weight tests always run."""
    exported = Path(os.environ.get("BERTRT_TEST_BUNDLE", REAL_BUNDLE))
    if (exported / "manifest.json").is_file():
        return exported
    bundle: Path = request.getfixturevalue("small_real_bundle")[0]
    return bundle


@pytest.fixture
def frequent_switches() -> Iterator[None]:
    """Switch threads every 10 µs instead of 5 ms, so races on shared state show up."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


@pytest.fixture
def concurrently() -> Callable[[Callable[[int], None], int], None]:
    """``concurrently(worker, n)`` runs ``worker(0)`` ... ``worker(n - 1)`` on n threads
    released together, and fails the test if one hangs or raises (a thread's exception is
    otherwise lost)."""

    def run(worker: Callable[[int], None], n_threads: int) -> None:
        start = threading.Barrier(n_threads)
        errors: list[BaseException] = []

        def body(number: int) -> None:
            try:
                start.wait()
                worker(number)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=body, args=(n,)) for n in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        assert not any(t.is_alive() for t in threads), "a thread hung"
        assert errors == []

    return run


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A self-signed CA, and a certificate it issued for 127.0.0.1: (ca, cert, key) PEM files."""
    trustme = pytest.importorskip("trustme")
    folder = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1")
    authority.cert_pem.write_to_path(folder / "ca.pem")
    issued.private_key_pem.write_to_path(folder / "key.pem")
    for blob in issued.cert_chain_pems:
        blob.write_to_path(folder / "cert.pem", append=True)
    return folder / "ca.pem", folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One Ray instance for the session's `ray` tests: 2 CPUs on loopback, no dashboard, a
    temp folder of its own (never the last cluster `ray start` left on the machine). At the
    end it is shut down, and every process it started must be gone."""
    import ray
    from ray_processes import processes_started_by, wait_gone

    # Short: Ray's socket paths under it must stay within 107 characters.
    temp = Path(tempfile.mkdtemp(prefix="brt-ray-", dir="/tmp"))
    try:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=str(temp),
            log_to_driver=False,
        )
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:"), "Ray is not on loopback"
    except BaseException:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        raise
    yield ray
    if "ray.serve" in sys.modules:
        sys.modules["ray.serve"].shutdown()
    ray.shutdown()
    left = wait_gone(processes_started_by(os.getpid()), timeout=30)
    shutil.rmtree(temp, ignore_errors=True)
    assert not left, f"Ray processes outlived ray.shutdown(): {left}"


@pytest.fixture(scope="session")
def ray_serve(ray_session: Any) -> Iterator[str]:
    """Ray Serve on the session's Ray instance, its HTTP proxy on a free loopback port; the
    proxy's base URL. Tests deploy one app at a time on it (``ray_serving.RayApp``)."""
    from ray import serve

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
