"""Tests for the bugs a bug-seeding pass found the suite blind to (tests/README.md tells how to
seed them again): a validator that averages instead of taking the maximum, labels read in
JSON key order, and a ``null_threshold`` dropped on its way through HTTP or the CLI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from graph_edits import edit_output
from typer.testing import CliRunner

import bertrt
from bertrt.cli import app
from bertrt.manifest import sha256_of
from bertrt.types import Precision, Task

pytestmark = pytest.mark.filterwarnings("ignore:The qa head")
QUESTION = "what is the capital of france?"
CONTEXT = "paris is the capital of france. the immune system is a body system which has cells."
# "No answer" beats every span by more than -1e6, and by more than 1e6 never: the threshold
# alone decides between an empty answer and a span.
ALWAYS_EMPTY, NEVER_EMPTY = -1e6, 1e6


def test_one_real_token_value_off_by_1e_3_fails_validation(
    tiny_bundle: Path, tiny_torch_models: dict[str, Any], tiny_recipe: Any, tmp_path: Path
) -> None:
    """One value among thousands: a mean (or a mask that reads padding) would pass it."""
    from bertrt.export import validate

    model, tokenizer = tiny_torch_models[Task.EMBED.value], tiny_torch_models["tokenizer"]
    reference = validate.torch_reference(Task.EMBED, model, tokenizer, tiny_recipe.max_length, None)
    source = tiny_bundle / "embedder" / "model.onnx"
    assert validate.validate_onnx(source, Task.EMBED, Precision.FP32, reference)["passed"] is True
    # The first text's [CLS] token: real in every batch, whatever the padding.
    shifted = edit_output(source, tmp_path / "model.onnx", "last_hidden_state", [((0, 0, 0), 1e-3)])
    report = validate.validate_onnx(shifted, Task.EMBED, Precision.FP32, reference)
    assert report["passed"] is False
    assert report["failures"] == ["last_hidden_state differs by 0.001 > 0.0001"]
    assert report["max_abs_diff"]["last_hidden_state"] == pytest.approx(1e-3, rel=1e-2)
    assert report["max_abs_diff"]["pooler_output"] <= 1e-4  # the edit touched one output only


@pytest.fixture(scope="module")
def twelve_label_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier with 12 labels, exported; its manifest then loses ``labels``, so the
    runtime falls back to config.json, rewritten with sorted keys: its id2label runs "0", "1",
    "10", "11", "2"..."""
    import torch
    from bertrt.export.pipeline import ExportOptions, export_bundle
    from bertrt.export.recipe import recipe_from_dict
    from bertrt.export.tiny import tiny_config, write_tiny_source
    from transformers import BertForSequenceClassification

    source = write_tiny_source(tmp_path_factory.mktemp("twelve-source"))
    config = tiny_config(len((source / "vocab.txt").read_text().split()))
    config.num_labels = 12
    config.id2label = {i: f"label-{i}" for i in range(12)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(source, safe_serialization=True)
    recipe = recipe_from_dict({"name": "twelve", "max_length": 32, "classifier": {"source": str(source)}})
    out = tmp_path_factory.mktemp("twelve") / "bundle"
    export_bundle(recipe, ExportOptions(out=out, precisions=(Precision.FP32,)), log=lambda _: None)
    model_dir = out / "classifier"
    # A config.json written with sorted keys (as json.dumps(sort_keys=True) and many tools do).
    config_path = model_dir / "config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()), sort_keys=True))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["labels"] = None
    manifest["files"]["config.json"] = sha256_of(config_path)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_labels_from_a_12_label_config_are_in_id_order(twelve_label_classifier: Path) -> None:
    from bertrt.export.validate import run_onnx

    id2label = json.loads((twelve_label_classifier / "classifier" / "config.json").read_text())["id2label"]
    assert list(id2label)[:4] == ["0", "1", "10", "11"]  # key order is not id order
    classifier = bertrt.load(twelve_label_classifier, device="cpu").classifier
    assert classifier.labels == tuple(f"label-{i}" for i in range(12))
    texts = ["i love paris", "the film was bad", "a", "what a plot"]
    encoded = classifier.tokenizer.pad(classifier.tokenizer.encode(texts)).feeds()
    logits = run_onnx(twelve_label_classifier / "classifier" / "model.onnx", encoded)["logits"]
    assert [r.label for r in classifier(texts)] == [f"label-{i}" for i in np.argmax(logits, axis=-1)]


def test_null_threshold_through_http(tiny_bundle: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bertrt.batcher import BatcherOptions
    from bertrt.serve import ServeConfig
    from bertrt.serve.app import create_app

    config = ServeConfig(models=tiny_bundle, device=bertrt.Device.CPU, batching=BatcherOptions(max_wait_ms=1))
    with TestClient(create_app(config)) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200:  # the models load in the background
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.05)

        def answers(threshold: float) -> list[dict[str, Any]]:
            body = {"question": QUESTION, "context": CONTEXT, "null_threshold": threshold}
            response = client.post("/qa", json=body)
            assert response.status_code == 200, response.text
            results: list[dict[str, Any]] = response.json()["results"][0]["answers"]
            return results

        assert [a["text"] for a in answers(ALWAYS_EMPTY)] == [""]
        assert answers(NEVER_EMPTY)[0]["text"] != ""


def test_null_threshold_through_the_cli(tiny_bundle: Path) -> None:
    def answers(threshold: float) -> list[dict[str, Any]]:
        args = ["qa", "-q", QUESTION, "-c", CONTEXT, "--models", str(tiny_bundle), "--json"]
        result = CliRunner().invoke(app, [*args, "--null-threshold", str(threshold)])
        assert result.exit_code == 0, result.stderr
        results: list[dict[str, Any]] = json.loads(result.stdout)[0]["answers"]
        return results

    assert [a["text"] for a in answers(ALWAYS_EMPTY)] == [""]
    assert answers(NEVER_EMPTY)[0]["text"] != ""


def test_the_null_threshold_is_what_empties_the_answer(tiny_bundle: Path) -> None:
    """The library's own decision, so the two front-end tests above test only the plumbing."""
    qa = bertrt.load(tiny_bundle, device="cpu").qa
    assert [a.text for a in qa.answer(QUESTION, CONTEXT, null_threshold=ALWAYS_EMPTY).answers] == [""]
    assert all(a.text for a in qa.answer(QUESTION, CONTEXT).answers)
