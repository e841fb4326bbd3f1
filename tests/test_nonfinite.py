"""A file that emits NaN or inf is refused everywhere: at export, by `bertrt validate`, and by
the runtime, which never hands such values to a caller (NaN is not even valid JSON).

The faulty files are real graphs: the tiny bundle's files with nodes appended that put a NaN
and an infinity into one output (:mod:`graph_edits`); nothing in the validator is patched.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from graph_edits import edit_bundle_file, edit_output
from typer.testing import CliRunner

import bertrt
from bertrt.cli import app
from bertrt.errors import NonFiniteOutput, ValidationFailed
from bertrt.manifest import ModelManifest
from bertrt.types import Precision, Task

# One NaN and one infinity, both on real tokens of the first text (its [CLS] and next token).
NAN_AND_INF = [((0, 0, 0), math.nan), ((0, 1, 0), math.inf)]
pytestmark = pytest.mark.filterwarnings("ignore:The qa head")


@pytest.fixture(scope="module")
def embed_reference(tiny_torch_models: dict[str, Any], tiny_recipe: Any) -> Any:
    from bertrt.export import validate

    model, tokenizer = tiny_torch_models[Task.EMBED.value], tiny_torch_models["tokenizer"]
    return validate.torch_reference(Task.EMBED, model, tokenizer, tiny_recipe.max_length, None)


@pytest.mark.parametrize("precision", list(Precision))
def test_validation_refuses_nan_and_inf_naming_the_output_and_count(
    precision: Precision, tiny_bundle: Path, embed_reference: Any, tmp_path: Path
) -> None:
    """Every precision, int8 included, whose own tolerance has no elementwise bound."""
    from bertrt.export.validate import validate_onnx

    source = tiny_bundle / "embedder" / "model.onnx"
    clean = validate_onnx(source, Task.EMBED, precision, embed_reference)
    assert clean["passed"] is True, clean["failures"]
    broken = edit_output(source, tmp_path / "model.onnx", "last_hidden_state", NAN_AND_INF)
    report = validate_onnx(broken, Task.EMBED, precision, embed_reference)
    assert report["passed"] is False
    assert report["failures"] == ["last_hidden_state holds 2 non-finite values (NaN or inf)"]
    assert report["non_finite"] == {"last_hidden_state": 2}
    json.dumps(report, allow_nan=False)  # the report a manifest records stays valid JSON


def poisoned_builds(monkeypatch: pytest.MonkeyPatch, precision: Precision) -> None:
    """The export builds its real files, then the ``precision`` file of each model emits NaN and inf."""
    from bertrt.export import pipeline

    build = pipeline.build_variant

    def build_then_poison(raw: Path, model_dir: Path, built: Precision, *args: Any, **kwargs: Any) -> Any:
        result = build(raw, model_dir, built, *args, **kwargs)
        if built is precision:
            output = "last_hidden_state" if model_dir.name == "embedder" else None
            if output is not None:
                edit_output(model_dir / result.file, model_dir / result.file, output, NAN_AND_INF)
        return result

    monkeypatch.setattr(pipeline, "build_variant", build_then_poison)


def embedder_recipe(tiny_source: Path) -> Any:
    from bertrt.export.recipe import recipe_from_dict

    return recipe_from_dict({"name": "nan", "max_length": 64, "embedder": {"source": str(tiny_source)}})


def test_export_refuses_an_fp32_file_that_emits_nan(
    tiny_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertrt.export.pipeline import ExportOptions, export_bundle

    poisoned_builds(monkeypatch, Precision.FP32)
    out = tmp_path / "bundle"
    options = ExportOptions(out=out, precisions=(Precision.FP32,))
    with pytest.raises(ValidationFailed, match=r"embedder fp32 .* last_hidden_state holds 2 non-finite values"):
        export_bundle(embedder_recipe(tiny_source), options, log=lambda _: None)
    assert not out.exists()


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_export_leaves_out_an_fp16_file_that_emits_nan(
    strict: bool, tiny_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16 is validated on a GPU; here the validation-device rule is told the CPU runs it,
    so the check that a GPU machine makes runs on this one."""
    from bertrt.export import pipeline
    from bertrt.export.variants import Placement

    from bertrt.types import Device

    poisoned_builds(monkeypatch, Precision.FP16)
    monkeypatch.setattr(pipeline, "validation_device", lambda precision: Placement(Device.CPU, "test"))
    out, lines = tmp_path / "bundle", []
    options = pipeline.ExportOptions(out=out, precisions=(Precision.FP32, Precision.FP16), strict=strict)
    if strict:
        with pytest.raises(ValidationFailed, match="embedder fp16 failed validation .* no bundle was written"):
            pipeline.export_bundle(embedder_recipe(tiny_source), options, log=lines.append)
        assert not out.exists()
        return
    pipeline.export_bundle(embedder_recipe(tiny_source), options, log=lines.append)
    manifest = ModelManifest.read(out / "embedder")
    assert list(manifest.variants) == [Precision.FP32] and not (out / "embedder" / "model.fp16.onnx").exists()
    failed = manifest.failed[Precision.FP16].validation
    assert failed["passed"] is False and failed["non_finite"] == {"last_hidden_state": 2}
    assert any("warning: embedder fp16 failed its check" in line and "left out" in line for line in lines)
    with pytest.raises(bertrt.BundleError, match="no fp16 variant because it failed validation .* non-finite"):
        bertrt.load(out, device="cpu", precision="fp16").embedder("a")


@pytest.fixture(scope="module")
def nan_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with its classifier's and QA model's fp32 files emitting NaN and inf
    in the first row of every batch (checksums updated, as a broken export writes them)."""
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("nan") / "tiny"))
    edit_bundle_file(bundle / "classifier", "model.onnx", "logits", [((0, 0), math.nan), ((0, 1), math.inf)])
    edit_bundle_file(bundle / "qa", "model.onnx", "start_logits", [((0, 0), math.nan), ((0, 1), -math.inf)])
    return bundle


def test_bertrt_validate_refuses_files_that_emit_nan(nan_bundle: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "--models", str(nan_bundle), "--precision", "fp32", "--json"])
    assert result.exit_code == 1, result.output
    checks = {check["model"]: check for check in json.loads(result.stdout)["checks"]}
    assert checks["embedder"]["passed"] is True
    assert checks["classifier"]["failures"] == ["logits holds 2 non-finite values (NaN or inf)"]
    (failure,) = checks["qa"]["failures"]
    found = re.fullmatch(r"start_logits holds (\d+) non-finite values \(NaN or inf\)", failure)
    # Two per run: the edit poisons the first row of every batch, and validation's QA windows
    # run as several row chunks (bertrt.session), each a batch of its own to the graph.
    assert found is not None and int(found[1]) >= 2 and int(found[1]) % 2 == 0


def test_the_runtime_names_the_file_and_input_instead_of_printing_nan(nan_bundle: Path) -> None:
    texts = ["a", "the plot of the movie was good"]  # the longer text runs first: batch row 0
    result = CliRunner().invoke(app, ["classify", *texts, "--models", str(nan_bundle), "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    model_file = nan_bundle / "classifier" / "model.onnx"
    assert f"{model_file} gave NaN or infinite values in its logits output for input #1" in result.stderr
    with pytest.raises(NonFiniteOutput) as error:
        bertrt.load(nan_bundle, device="cpu").qa(["who?", "what?"], ["the actors", "paris is the capital " * 20])
    assert error.value.output == "start_logits" and error.value.index == 1


def test_a_single_text_is_checked_too(nan_bundle: Path) -> None:
    """One text takes the single-request path; its row is checked all the same."""
    with pytest.raises(NonFiniteOutput) as error:
        bertrt.load(nan_bundle, device="cpu").classifier("a")
    assert error.value.output == "logits" and error.value.index == 0


def test_the_embedder_fetches_and_checks_only_the_outputs_its_pooling_reads(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "tiny"))
    edit_bundle_file(bundle / "embedder", "model.onnx", "pooler_output", [((0, 0), math.nan)])
    embedder = bertrt.load(bundle, device="cpu").embedder
    for texts in ("a", ["a", "the plot of the movie"]):
        for pooling in ("mean", "cls"):
            assert all(np.isfinite(e.vector).all() for e in embedder(texts, pooling=pooling))
        with pytest.raises(NonFiniteOutput) as error:
            embedder(texts, pooling="pooler")
        assert error.value.output == "pooler_output"


@pytest.mark.parametrize("size", [2, 300])  # summed in Python floats, and with NumPy
def test_the_runtime_check_finds_the_bad_row_and_passes_finite_sums_that_overflow(size: int) -> None:
    from bertrt.runner import check_finite

    huge = np.full((3, size), 1e308)  # finite, but its sum is inf
    check_finite({"logits": huge}, [4, 5, 6], Path("model.onnx"))
    for bad in (np.nan, np.inf, -np.inf):
        values = huge.copy()
        values[1, -1] = bad
        with pytest.raises(NonFiniteOutput, match="for input #5"):
            check_finite({"logits": values}, [4, 5, 6], Path("model.onnx"))
