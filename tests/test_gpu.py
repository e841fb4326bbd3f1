"""The CUDA path. `gpu` tests need a GPU with onnxruntime-gpu and run on a GPU machine
(`pytest -m gpu`); on other machines they are deselected by the `gpu` marker check below.
The GPU check script's rehearsal runs everywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertrt import Classifier, Embedder, Precision, QuestionAnswerer

REPO = Path(__file__).resolve().parent.parent
TEXTS = ["i love paris", "the film was bad", "what a great story about the city of paris"]


def _cuda_runs() -> bool:
    from bertrt.providers import cuda_failure

    return cuda_failure() is None


gpu = pytest.mark.skipif(not _cuda_runs(), reason="needs a CUDA GPU with onnxruntime-gpu (run with -m gpu there)")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16])
def test_cuda_matches_cpu(tiny_bundle: Path, precision: Precision) -> None:
    tolerance = 1e-4 if precision is Precision.FP32 else 1e-2
    cpu = Embedder(tiny_bundle / "embedder", device="cpu")(TEXTS, pooling="pooler")
    cuda = Embedder(tiny_bundle / "embedder", device="cuda", precision=precision)(TEXTS, pooling="pooler")
    for a, b in zip(cpu, cuda, strict=True):
        np.testing.assert_allclose(b.vector, a.vector, atol=tolerance)
    labels_cpu = [c.label for c in Classifier(tiny_bundle / "classifier", device="cpu")(TEXTS)]
    labels_cuda = [c.label for c in Classifier(tiny_bundle / "classifier", device="cuda", precision=precision)(TEXTS)]
    assert labels_cuda == labels_cpu
    qa = QuestionAnswerer(tiny_bundle / "qa", device="cuda", precision=precision)
    answer = qa.answer("what is the capital?", "paris is the capital of france.").best
    assert answer is not None and "paris is the capital of france."[answer.start : answer.end] == answer.text


@pytest.mark.gpu
@gpu
def test_export_validates_fp32_and_fp16_on_the_gpu_and_int8_on_the_cpu(tiny_bundle: Path) -> None:
    from bertrt.manifest import ModelManifest

    for folder in ("embedder", "classifier", "qa"):
        variants = ModelManifest.read(tiny_bundle / folder).variants
        for precision, device in ((Precision.FP32, "cuda"), (Precision.FP16, "cuda"), (Precision.INT8, "cpu")):
            report = variants[precision].validation
            assert report["ran"] is True and report["device"] == device and report["passed"] is True, (folder, report)


def test_gpu_check_rehearses_on_cpu(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bertrt.bench.gpu_check", "--device", "cpu", "--quick", "--repeats", "3",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    parity = results["subjects"]["bert-base-classifier"]["parity"]
    assert parity["fp32"]["max_abs_diff_vs_torch_fp32"] <= 1e-4 and parity["fp32"]["labels_identical"]
    assert (tmp_path / "gpu_check.png").stat().st_size > 0
