"""A real export of the packaged MiniLM with a tiny training budget (slow: a few minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_real_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("real") / "minilm"
    command = [
        sys.executable, "-m", "bertrt.cli", "export",
        "--out", str(out),
        "--train-size", "200", "--heldout-size", "200",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_real_export_validates_every_file(small_real_bundle: tuple[Path, str]) -> None:
    out, stdout = small_real_bundle
    assert "held-out IMDB accuracy" in stdout
    for name in ("embedder", "classifier", "qa"):
        manifest = json.loads((out / name / "manifest.json").read_text())
        fp32 = manifest["variants"]["fp32"]["validation"]
        assert fp32["passed"] is True, fp32
        assert max(fp32["max_abs_diff"].values()) <= 1e-4
        assert manifest["variants"].keys() >= {"fp32"}
    classifier = json.loads((out / "classifier" / "manifest.json").read_text())
    # 200 reviews are 13 optimizer steps: the accuracy target belongs to the default export;
    # here the scores must be recorded on the requested held-out sizes.
    training = classifier["training"]
    assert training["heldout_examples"] == 200 and training["train_examples"] == 200
    assert 0.0 <= training["imdb_heldout_accuracy"] <= 1.0 and 0.0 <= training["rotten_tomatoes_accuracy"] <= 1.0
    assert classifier["labels"] == ["NEGATIVE", "POSITIVE"]
    assert json.loads((out / "qa" / "manifest.json").read_text())["trained"] is False
