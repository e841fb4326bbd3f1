"""A failing optional variant costs only itself: the bundle keeps what passed, says what is
missing and why (manifest, export log, `bertrt info`, `bertrt validate`, `--precision`);
``--strict`` restores all-or-nothing. And an untrained head is judged on what means something.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from graph_edits import edit_output
from typer.testing import CliRunner

from bertrt.cli import app
from bertrt.errors import ValidationFailed
from bertrt.manifest import ModelManifest
from bertrt.types import Precision, Task

pytestmark = pytest.mark.filterwarnings("ignore:The qa head")
BROKEN_LOGITS = [((0, 0), math.nan)]


def classifier_recipe(tiny_source: Path) -> Any:
    from bertrt.export.recipe import recipe_from_dict

    return recipe_from_dict(
        {"name": "policy", "max_length": 64, "classifier": {"source": str(tiny_source), "finetune": False}}
    )


def broken_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 file the export builds emits a NaN (the fp32 file is untouched)."""
    from bertrt.export import pipeline

    build = pipeline.build_variant

    def build_then_break(raw: Path, model_dir: Path, precision: Precision, *args: Any, **kwargs: Any) -> Any:
        built = build(raw, model_dir, precision, *args, **kwargs)
        if precision is Precision.INT8:
            edit_output(model_dir / built.file, model_dir / built.file, "logits", BROKEN_LOGITS)
        return built

    monkeypatch.setattr(pipeline, "build_variant", build_then_break)


@pytest.fixture(scope="module")
def bundle_without_int8(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    from bertrt.export.pipeline import ExportOptions, export_bundle

    from bertrt.cli.render import export_summary_text

    out, lines = tmp_path_factory.mktemp("policy") / "bundle", []
    with pytest.MonkeyPatch.context() as monkeypatch:
        broken_int8(monkeypatch)
        options = ExportOptions(out=out, precisions=(Precision.FP32, Precision.INT8))
        summary = export_bundle(classifier_recipe(tiny_source), options, log=lines.append)
    return out, [*lines, *export_summary_text(summary).splitlines()]


def test_a_failing_int8_is_left_out_and_recorded(bundle_without_int8: tuple[Path, list[str]]) -> None:
    bundle, lines = bundle_without_int8
    manifest = ModelManifest.read(bundle / "classifier")
    assert list(manifest.variants) == [Precision.FP32] and "model.int8.onnx" not in manifest.files
    assert not (bundle / "classifier" / "model.int8.onnx").exists()
    failed = manifest.failed[Precision.INT8]
    assert failed.file == "model.int8.onnx" and failed.validation["passed"] is False
    assert failed.validation["failures"] == ["logits holds 1 non-finite value (NaN or inf)"]
    assert failed.optimization["scheme"] == "static"  # the numbers of the build are kept too
    [warning] = [line for line in lines if "warning:" in line]
    assert "classifier int8 failed its check" in warning and "left out of the bundle" in warning
    # The summary printed on stdout names it too, beside the files that were written.
    assert any("int8" in line and "(left out)" in line and "FAILED: logits holds 1" in line for line in lines)
    assert any(line.startswith("Bundle written to") and "peak memory" in line for line in lines)
    assert set(manifest.peak_rss_mib) >= {"torch to onnx", "fp32 build", "fp32 validate", "int8 build"}
    assert all(mib > 0 for mib in manifest.peak_rss_mib.values())


def test_strict_writes_nothing_when_int8_fails(
    tiny_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertrt.export.pipeline import ExportOptions, export_bundle

    broken_int8(monkeypatch)
    out = tmp_path / "bundle"
    options = ExportOptions(out=out, precisions=(Precision.FP32, Precision.INT8), strict=True)
    with pytest.raises(ValidationFailed, match="classifier int8 failed validation .*without --strict"):
        export_bundle(classifier_recipe(tiny_source), options, log=lambda _: None)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_info_and_validate_show_the_left_out_variant(bundle_without_int8: tuple[Path, list[str]]) -> None:
    bundle = str(bundle_without_int8[0])
    info = CliRunner().invoke(app, ["info", "--models", bundle])
    assert info.exit_code == 0, info.output
    [row] = [line for line in info.stdout.splitlines() if line.startswith("classifier") and " int8 " in line]
    assert "FAILED, left out: logits holds 1 non-finite value" in row
    described = json.loads(CliRunner().invoke(app, ["info", "--models", bundle, "--json"]).stdout)
    assert described["models"]["classifier"]["failed"]["int8"]["validation"]["passed"] is False

    checked = CliRunner().invoke(app, ["validate", "--models", bundle, "--json"])
    assert checked.exit_code == 0, checked.output  # every file of the bundle passes
    rows = {row["precision"]: row for row in json.loads(checked.stdout)["checks"]}
    assert rows["fp32"]["passed"] is True and rows["fp32"]["left_out"] is False
    assert rows["int8"]["left_out"] is True and rows["int8"]["passed"] is False
    table = CliRunner().invoke(app, ["validate", "--models", bundle]).stdout
    assert "left out at export: logits holds 1 non-finite value" in table


def test_asking_for_the_left_out_variant_says_why_it_is_missing(bundle_without_int8: tuple[Path, list[str]]) -> None:
    bundle = str(bundle_without_int8[0])
    result = CliRunner().invoke(app, ["classify", "a film", "--models", bundle, "--precision", "int8"])
    assert result.exit_code == 2
    [message] = result.stderr.strip().splitlines()
    assert "has no int8 variant because it failed validation against PyTorch at export" in message
    assert "(logits holds 1 non-finite value (NaN or inf)) and was left out; choose one of fp32" in message


def test_an_untrained_head_is_judged_on_hidden_states_and_logits(
    tiny_bundle: Path, tiny_torch_models: dict[str, Any], tmp_path: Path
) -> None:
    from bertrt.export import validate

    manifest = ModelManifest.read(tiny_bundle / "qa")
    assert manifest.trained is False
    for precision, variant in manifest.variants.items():
        report = variant.validation
        if report["ran"]:
            assert report["passed"] is True and "judged_on" in report, precision
            assert report["tolerance"]["min_answer_agreement"] == 0.0  # measured, not judged
            assert "answer_agreement" in report and report["min_cosine_hidden"] >= 0.9

    model, tokenizer = tiny_torch_models[Task.QA.value], tiny_torch_models["tokenizer"]
    reference = validate.torch_reference(Task.QA, model, tokenizer, manifest.max_length, manifest.doc_stride)
    assert reference.head_input is not None and reference.head_input.shape[:2] == reference.feeds["input_ids"].shape
    source = tiny_bundle / "qa" / "model.onnx"
    # A logit off by 1e-3 on a real token still fails the untrained head's fp32 file.
    shifted = edit_output(source, tmp_path / "model.onnx", "end_logits", [((0, 3), 1e-3)])
    report = validate.validate_onnx(shifted, Task.QA, Precision.FP32, reference, trained=False)
    assert report["failures"] == ["end_logits differs by 0.001 > 0.0001"]
    assert report["min_cosine_hidden"] > 0.9999  # the hidden states were not touched
