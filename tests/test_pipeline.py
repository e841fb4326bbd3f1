"""The export pipeline on tiny random BERTs: conversion, validation, manifests, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertrt.errors import BundleError, ConfigError, ExportError
from bertrt.manifest import BundleManifest, ModelManifest, sha256_of
from bertrt.types import Precision, Task


def test_bundle_has_three_validated_models(tiny_bundle: Path) -> None:
    bundle = BundleManifest.read(tiny_bundle)
    assert bundle.models == {"embedder": Task.EMBED, "classifier": Task.CLASSIFY, "qa": Task.QA}
    for name, task in bundle.models.items():
        manifest = ModelManifest.read(tiny_bundle / name)
        assert manifest.task is task
        fp32 = manifest.variants[Precision.FP32]
        assert fp32.validation["passed"] is True
        assert all(diff <= 1e-4 for diff in fp32.validation["max_abs_diff"].values())
        for file, digest in manifest.files.items():
            assert sha256_of(tiny_bundle / name / file) == digest
        assert "tokenizer.json" in manifest.files and "config.json" in manifest.files


def test_embedder_exports_token_embeddings_and_pooler(tiny_bundle: Path) -> None:
    manifest = ModelManifest.read(tiny_bundle / "embedder")
    assert [o.name for o in manifest.outputs] == ["last_hidden_state", "pooler_output"]
    assert manifest.inputs[0].shape == ("batch_size", "sequence_length")


def test_classifier_has_labels_and_qa_is_marked_untrained(tiny_bundle: Path) -> None:
    classifier = ModelManifest.read(tiny_bundle / "classifier")
    assert classifier.labels is not None and len(classifier.labels) == 2
    qa = ModelManifest.read(tiny_bundle / "qa")
    assert qa.trained is False and qa.doc_stride == 16
    # a random head on a bare encoder is not a trained classifier
    assert classifier.trained is False
    assert [o.name for o in qa.outputs] == ["start_logits", "end_logits"]


def test_onnx_matches_torch_on_unseen_batch(tiny_bundle: Path, tiny_torch_models: dict[str, Any]) -> None:
    import torch
    from bertrt.export.validate import run_onnx

    tokenizer = tiny_torch_models["tokenizer"]
    texts = ["a movie", "the plot was bad and the actors were not good at all"]
    feeds = tokenizer(texts, padding=True, return_tensors="np")
    feeds = {k: v.astype(np.int64) for k, v in feeds.items()}
    with torch.inference_mode():
        expected = tiny_torch_models["classify"](**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    actual = run_onnx(tiny_bundle / "classifier" / "model.onnx", feeds)["logits"]
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_unreachable_hub_id_fails_with_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    from bertrt.export.sources import load_pretrained
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="from the model hub.*local folder"):
        load_pretrained(AutoTokenizer, "no-such-org/no-such-bert")


def test_missing_folder_source_is_treated_as_hub_id_and_fails_clearly() -> None:
    from bertrt.export.recipe import recipe_from_dict

    with pytest.raises(Exception, match="source"):
        recipe_from_dict({"embedder": {}, "classifier": {"source": "x"}, "qa": {"source": "x"}})


def test_a_recipe_builds_the_models_whose_sections_it_has() -> None:
    from bertrt.export.recipe import ClassifierTraining, QATraining, recipe_from_dict

    recipe = recipe_from_dict({"embedder": {"source": "x"}, "qa": {"source": "y", "training": {"doc_stride": 32}}})
    assert list(recipe.models) == ["embedder", "qa"]
    # every trainable task keeps its settings (int8 calibration reads the classifier's split)
    assert recipe.classifier_training == ClassifierTraining() and recipe.training["qa"] == QATraining(doc_stride=32)
    assert recipe.with_overrides(qa={"epochs": 2.0, "doc_stride": None}).training["qa"] == QATraining(
        doc_stride=32, epochs=2.0
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"embedder": {"source": "x"}, "clasifier": {}}, r"Unknown key\(s\) \['clasifier'\] in the recipe"),
        ({"name": "empty"}, "names no model; add at least one of the sections"),
        ({"classifier": {"source": "x", "finetune": "maybe"}}, r"\[classifier\] finetune must be true, false"),
        ({"classifier": "x"}, r"must be a section \(\[classifier\]\)"),
        ({"qa": {"source": "x", "training": {"stride": 3}}}, r"Unknown key\(s\) \['stride'\] in \[qa.training\]"),
    ],
    ids=["misspelt section", "no model", "bad finetune", "not a table", "bad training key"],
)
def test_bad_recipes_name_what_to_fix(data: dict[str, Any], message: str) -> None:
    from bertrt.export.recipe import recipe_from_dict

    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(data)


def test_bundle_manifest_is_json_with_versions(tiny_bundle: Path) -> None:
    data = json.loads((tiny_bundle / "manifest.json").read_text())
    assert data["recipe"] == "tiny" and "torch" in data["versions"]


def test_reading_a_non_bundle_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bertrt export"):
        BundleManifest.read(tmp_path)


def test_validate_command_rechecks_bundle(tiny_bundle: Path) -> None:
    from typer.testing import CliRunner

    from bertrt.cli import app

    result = CliRunner().invoke(app, ["validate", "--models", str(tiny_bundle), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True
    assert {c["model"] for c in data["checks"]} == {"embedder", "classifier", "qa"}


def test_validate_command_exits_1_when_a_file_no_longer_matches(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    import onnx
    from onnx import numpy_helper
    from typer.testing import CliRunner

    from bertrt.cli import app

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    path = bundle / "classifier" / "model.onnx"
    model = onnx.load(str(path))
    weight = next(t for t in model.graph.initializer if t.name == "classifier.weight")
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) + 0.5, weight.name))
    onnx.save(model, str(path))
    result = CliRunner().invoke(app, ["validate", "--models", str(bundle)])
    assert result.exit_code == 1
    assert "FAILED" in result.stdout
