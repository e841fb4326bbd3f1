"""`bertrt export` through Typer's CliRunner: options reach the recipe, bad ones stop it before
any work, and a tiny export prints its summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertrt.cli import app


@pytest.fixture(scope="module")
def recipe_file(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe as a TOML file (no training; QA windows of 64 tokens)."""
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    path.write_text(
        f'name = "tiny"\nmax_length = 64\n'
        f'[embedder]\nsource = "{tiny_source}"\n'
        f'[classifier]\nsource = "{tiny_source}"\nfinetune = false\n'
        f'[qa]\nsource = "{tiny_source}"\nfinetune = "with-data"\n'
        f"[qa.training]\nmax_length = 64\ndoc_stride = 16\n",
        encoding="utf-8",
    )
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--learning-rate", "2"], "learning_rate must be in (0, 1), got 2.0."),
        (["--qa-epochs", "0"], "epochs must be positive, got 0.0."),
        (["--qa-data", "no-such.json"], "--qa-data: SQuAD data no-such.json does not exist; pass a SQuAD-format"),
    ],
)
def test_a_bad_option_stops_the_export_before_any_work(
    recipe_file: Path, tmp_path: Path, options: list[str], message: str
) -> None:
    code, out, err = invoke("export", "--recipe", str(recipe_file), "--out", str(tmp_path / "out"), *options)
    assert code == 2 and out == "" and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_export_writes_the_bundle_and_prints_its_summary(recipe_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    code, stdout, err = invoke("export", "--recipe", str(recipe_file), "--out", str(out), "--precision", "fp32")
    assert code == 0, err
    lines = stdout.splitlines()
    assert re.fullmatch(rf"Bundle written to {re.escape(str(out))} in [\d.]+ min \(peak memory [\d.]+ GB\)\.", lines[0])
    for name in ("embedder", "classifier", "qa"):
        [row] = [line.split() for line in lines if line.split()[:2] == [name, "fp32"]]
        assert row[2] == "model.onnx" and row[3:7] == ["validated,", "max", "abs", "diff"]
    assert lines[-1].strip().startswith("qa span head is untrained (pass --qa-data to train it)")
    assert "[1/3] embedder" in err  # progress goes to stderr
    manifest = json.loads((out / "classifier" / "manifest.json").read_text(encoding="utf-8"))
    assert list(manifest["variants"]) == ["fp32"] and manifest["variants"]["fp32"]["validation"]["passed"] is True
