"""The two task tables: each task's facts in one place, and a new task is rows plus its code.

The token-tagging task below is added the way a contributor would add one: a runner, the
check that judges its head, and one row in each table (swapped in with monkeypatch, as the
tables are frozen). Nothing else in bertrt changes, yet the tiny source is exported through
the real pipeline, validated at export and by ``bertrt validate``, and served by
``bertrt.load``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

import bertrt
from bertrt import tasks
from bertrt.errors import BundleError, ConfigError
from bertrt.limits import check_texts
from bertrt.manifest import BundleManifest, ModelManifest
from bertrt.runner import TaskRunner
from bertrt.tasks import Head, TaskSpec, task_spec, task_specs
from bertrt.tokenizer import Encoding
from bertrt.types import Precision, Task

TAG = "tag"


class Tagger(TaskRunner):
    """One label per token: the runner of the new task."""

    task = TAG

    def __call__(self, texts: str | Sequence[str]) -> list[list[tuple[str, str]]]:
        texts = check_texts(texts, self.options)
        labels = self.manifest.labels or ()

        def postprocess(outputs: Mapping[str, np.ndarray], batch: list[Encoding]) -> list[list[tuple[str, str]]]:
            best = outputs["logits"].argmax(-1)
            return [
                [(token, labels[i]) for token, i in zip(e.tokens, best[row, : len(e)], strict=True)]
                for row, e in enumerate(batch)
            ]

        return self._run_texts(texts, postprocess)


def token_label_agreement(reference: Any, outputs: Mapping[str, np.ndarray], tolerance: Any) -> tuple[dict, list]:
    """The new task's head check: the share of real tokens whose label is PyTorch's."""
    mask = reference.feeds["attention_mask"].astype(bool)
    same = reference.outputs["logits"].argmax(-1)[mask] == outputs["logits"].argmax(-1)[mask]
    agreement = float(same.mean())
    failures = [f"token label agreement {agreement:.3f}"] if agreement < tolerance.min_label_agreement else []
    return {"token_label_agreement": agreement}, failures


@pytest.fixture
def tag_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The new task's row in each table."""
    from bertrt.export import tasks as export_tasks
    from transformers import AutoModelForTokenClassification

    runtime_row = TaskSpec(TAG, "tagger", Tagger, ("logits",), Head.LABELS, "re-export with a trained tagger")
    export_row = export_tasks.ExportSpec(
        TAG, "tagger", AutoModelForTokenClassification, "token-classification", check=token_label_agreement
    )
    monkeypatch.setattr(tasks, "TASKS", MappingProxyType({**tasks.TASKS, TAG: runtime_row}))
    monkeypatch.setattr(export_tasks, "EXPORTS", MappingProxyType({**export_tasks.EXPORTS, TAG: export_row}))


def test_a_new_task_needs_only_its_rows_a_runner_and_head_code(
    tag_task: None, tiny_source: Path, tmp_path: Path
) -> None:
    from bertrt.export.pipeline import ExportOptions, export_bundle
    from bertrt.export.recipe import recipe_from_dict
    from bertrt.export.revalidate import ValidateConfig, load_torch_model, validate_bundle

    source = str(tiny_source)
    recipe = recipe_from_dict({
        "name": "tiny-tags",
        "max_length": 64,
        "classifier": {"source": source, "finetune": False},
        "tagger": {"source": source},
    })
    out = tmp_path / "bundle"
    log: list[str] = []
    export_bundle(recipe, ExportOptions(out=out, precisions=(Precision.FP32, Precision.INT8)), log=log.append)

    assert log[0].startswith("[1/2] classifier") and any(line.startswith("[2/2] tagger") for line in log)
    assert BundleManifest.read(out).models == {"classifier": Task.CLASSIFY, "tagger": TAG}
    manifest = ModelManifest.read(out / "tagger")
    assert manifest.task == TAG and manifest.trained is False  # a bare encoder's new head
    assert manifest.labels == ("LABEL_0", "LABEL_1") and [o.name for o in manifest.outputs] == ["logits"]
    for precision in (Precision.FP32, Precision.INT8):
        report = manifest.variants[precision].validation
        assert report["passed"] is True and report["token_label_agreement"] >= 0.9, report

    with pytest.warns(UserWarning, match="The tag head .* never trained, .*; re-export with a trained tagger"):
        tagger = bertrt.load(out, device="cpu").runner(TAG)
    assert isinstance(tagger, Tagger)
    [tags] = tagger("i love paris")

    import torch

    model, tokenizer = load_torch_model(out / "tagger", TAG)
    with torch.inference_mode():
        logits = model(**tokenizer("i love paris", return_tensors="pt")).logits[0]
    assert [token for token, _ in tags] == ["[CLS]", "i", "love", "paris", "[SEP]"]
    assert [label for _, label in tags] == [manifest.labels[i] for i in logits.argmax(-1).tolist()]

    checks = validate_bundle(ValidateConfig(out))
    tagged = {(c.model, c.precision) for c in checks if c.task == TAG}
    assert tagged == {("tagger", Precision.FP32), ("tagger", Precision.INT8)}
    assert all(c.report["passed"] for c in checks)


def test_the_tables_agree() -> None:
    from bertrt.export.tasks import export_specs

    runtime = {spec.task: spec for spec in task_specs()}
    assert [spec.task for spec in task_specs()] == [Task.EMBED, Task.CLASSIFY, Task.QA]
    assert {spec.task for spec in export_specs()} <= set(runtime)
    assert len({spec.folder for spec in task_specs()}) == len(runtime)
    assert len({spec.section for spec in export_specs()}) == len(export_specs())
    for spec in task_specs():
        assert spec.runner.task == spec.task  # each runner serves its own row


def test_each_runner_checks_the_outputs_of_its_row(tiny_bundle: Path, tmp_path: Path) -> None:
    """A graph without the outputs its row names is refused, naming them."""
    import onnx

    from bertrt.manifest import sha256_of

    folder = Path(shutil.copytree(tiny_bundle / "qa", tmp_path / "qa"))
    model = onnx.load(str(folder / "model.onnx"))
    kept = [o for o in model.graph.output if o.name != "end_logits"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(folder / "model.onnx"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = sha256_of(folder / "model.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="lacks the output.s. end_logits a qa model needs"):
        task_spec(Task.QA).runner(folder, device="cpu")


def test_a_bundle_of_an_unknown_task_is_refused_up_front(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["models"]["qa"] = "ner"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"task\(s\) ner, which this version of bertrt does not know .*upgrade"):
        bertrt.load(bundle)


def test_an_unknown_task_name_lists_the_known_ones(tiny_bundle: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown task 'ner'; choose one of embed, classify, qa"):
        bertrt.load(tiny_bundle).runner("ner")


def test_manifests_read_back_built_in_tasks_as_members(tiny_bundle: Path) -> None:
    assert ModelManifest.read(tiny_bundle / "qa").task is Task.QA
    assert f"{Task.QA}" == "qa" and json.dumps({"task": Task.QA}) == '{"task": "qa"}'
