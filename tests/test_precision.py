"""precision="auto": which variant serves each model on this device, and why, from what the
bundle records; fp32 stays the default."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import bertrt
from bertrt import providers
from bertrt.cli import app
from bertrt.manifest import ModelManifest
from bertrt.precision import (
    CLASSIFY_BUDGET,
    EMBED_BUDGET,
    INT8_ANSWER_AGREEMENT,
    INT8_LABEL_AGREEMENT,
    INT8_POOLER_COSINE,
    MIN_EVALUATED,
    QA_BUDGET,
    choose_variant,
)
from bertrt.tasks import task_spec
from bertrt.types import Device, Precision, PrecisionChoice, Task

pytestmark = pytest.mark.filterwarnings("ignore:The qa head")
AUTO = PrecisionChoice.AUTO
# What each task's recorded evaluation holds, per data set: a passing and a failing figure.
PASSING = {
    "classifier": {"imdb_heldout": ("label_agreement", 0.992), "rotten_tomatoes": ("label_agreement", 0.987)},
    "qa": {"dev-v1.1.heldout8.json": ("answer_agreement", 0.962)},
    "embedder": {"imdb_heldout": ("pooler_cosine_p1", 0.991)},
}


def record(model_dir: Path, data: str, metric: str, value: float, count: int = 1000, sha256: str | None = None) -> None:
    """Write an evaluation record into the int8 variant of ``model_dir``'s manifest, as
    `bertrt eval --record` does."""
    manifest = ModelManifest.read(model_dir)
    int8 = manifest.variants[Precision.INT8]
    entry = {"count": count, metric: value, "sha256": sha256 or manifest.files[int8.file]}
    variants = {**manifest.variants, Precision.INT8: replace(int8, evaluation={**int8.evaluation, data: entry})}
    replace(manifest, variants=variants).write(model_dir)


def evaluated_copy(tiny_bundle: Path, where: Path, failing: str | None = None) -> Path:
    """A copy of the tiny bundle whose int8 files all have passing evaluation records, but
    ``failing``'s, whose figure falls just below its budget."""
    bundle = Path(shutil.copytree(tiny_bundle, where))
    for folder, datasets in PASSING.items():
        for data, (metric, value) in datasets.items():
            floor = task_spec(ModelManifest.read(bundle / folder).task).int8_budget.floor  # type: ignore[union-attr]
            record(bundle / folder, data, metric, floor - 0.001 if folder == failing else value)
    return bundle


@pytest.fixture(scope="module")
def passing(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return evaluated_copy(tiny_bundle, tmp_path_factory.mktemp("passing") / "tiny")


@pytest.fixture(scope="module")
def qa_failing(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return evaluated_copy(tiny_bundle, tmp_path_factory.mktemp("qa-failing") / "tiny", failing="qa")


def classifier_manifest(bundle: Path) -> ModelManifest:
    return ModelManifest.read(bundle / "classifier")


def test_the_budgets_are_the_issue_s() -> None:
    assert (INT8_LABEL_AGREEMENT, INT8_ANSWER_AGREEMENT, INT8_POOLER_COSINE) == (0.985, 0.95, 0.98)
    assert task_spec(Task.CLASSIFY).int8_budget is CLASSIFY_BUDGET
    assert task_spec(Task.QA).int8_budget is QA_BUDGET
    assert task_spec(Task.EMBED).int8_budget is EMBED_BUDGET


def test_auto_serves_int8_on_the_cpu_when_every_budget_is_met(passing: Path) -> None:
    bundle = bertrt.load(passing, device="cpu", precision="auto")
    for task in (Task.EMBED, Task.CLASSIFY, Task.QA):
        runner = bundle.runner(task)
        assert runner.model.precision is Precision.INT8 and runner.model.onnx_path.name == "model.int8.onnx"
        assert runner.variant.requested is AUTO
        assert runner.variant.reason.startswith("auto on cpu: int8 ") and runner.variant.reason.endswith(
            "so int8 serves"
        )
    reason = bundle.classifier.variant.reason
    assert "99.20% on 1,000 examples of imdb_heldout" in reason and "within the budget of 98.50%" in reason
    # The same file as asking for int8 by name: the same results.
    named = bertrt.load(passing, device="cpu", precision="int8")
    texts = ["i love paris", "the film was bad"]
    for a, b in zip(bundle.embedder(texts), named.embedder(texts), strict=True):
        np.testing.assert_array_equal(a.vector, b.vector)


def test_a_model_whose_int8_file_misses_its_budget_serves_fp32_and_says_why(qa_failing: Path) -> None:
    bundle = bertrt.load(qa_failing, device="cpu", precision="auto")
    assert bundle.qa.model.precision is Precision.FP32
    assert bundle.qa.variant.reason == (
        "auto on cpu: int8 answer agreement 94.90% on 1,000 examples of dev-v1.1.heldout8.json, "
        "below the budget of 95.00%, so fp32 serves"
    )
    # The other models still take their int8 files.
    assert bundle.classifier.model.precision is Precision.INT8
    assert bundle.embedder.model.precision is Precision.INT8


def test_fp32_stays_the_default_and_a_named_precision_is_served_as_asked(passing: Path) -> None:
    default = bertrt.load(passing, device="cpu").classifier
    assert default.model.precision is Precision.FP32
    assert default.variant.to_dict() == {"precision": "fp32", "requested": "fp32", "reason": "fp32 was asked for"}
    assert bertrt.load(passing, device="cpu", precision=Precision.INT8).classifier.variant.reason == (
        "int8 was asked for"
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: None, "int8 has no recorded evaluation on real data (its export check covers only built-in"),
        (
            lambda d: record(d, "imdb_heldout", "label_agreement", 0.999, count=MIN_EVALUATED - 1),
            "int8 label agreement 99.90% on 199 examples of imdb_heldout: too few examples",
        ),
        (
            lambda d: record(d, "imdb_heldout", "label_agreement", 0.999, sha256="0" * 64),
            "int8 has no recorded evaluation on real data of the current file",
        ),
        (
            lambda d: record(d, "imdb_heldout", "accuracy", 0.999),
            "int8's evaluation on imdb_heldout records no label agreement",
        ),
        (
            lambda d: [
                record(d, "imdb_heldout", "label_agreement", 0.999),
                record(d, "rotten_tomatoes", "label_agreement", 0.98),
            ],
            "int8 label agreement 99.90% on 1,000 examples of imdb_heldout, 98.00% on 1,000 examples of "
            "rotten_tomatoes, below the budget of 98.50%",
        ),
    ],
    ids=["no-record", "too-few", "other-file", "no-figure", "one-set-below"],
)
def test_what_auto_does_not_accept_as_evidence(
    tiny_bundle: Path, tmp_path: Path, edit: Any, expected: str
) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "tiny"))
    edit(bundle / "classifier")
    choice = choose_variant(classifier_manifest(bundle), AUTO, Device.CPU, CLASSIFY_BUDGET)
    assert choice.precision is Precision.FP32
    assert choice.reason.startswith(f"auto on cpu: {expected}") and choice.reason.endswith(", so fp32 serves")


def test_a_failed_export_check_rules_int8_out_whatever_the_evaluation(passing: Path) -> None:
    manifest = classifier_manifest(passing)
    int8 = manifest.variants[Precision.INT8]
    failed = replace(int8, validation={**int8.validation, "passed": False, "failures": ["label agreement 0.8 < 0.9"]})
    manifest = replace(manifest, variants={**manifest.variants, Precision.INT8: failed})
    choice = choose_variant(manifest, AUTO, Device.CPU, CLASSIFY_BUDGET)
    assert choice.precision is Precision.FP32
    assert "int8 failed its export check (label agreement 0.8 < 0.9)" in choice.reason


def test_a_task_without_a_budget_or_without_int8_serves_fp32(passing: Path, fp32_only_bundle: Path) -> None:
    no_budget = choose_variant(classifier_manifest(passing), AUTO, Device.CPU, None)
    assert no_budget.precision is Precision.FP32 and "the classify task has no int8 budget" in no_budget.reason
    runner = bertrt.load(fp32_only_bundle, device="cpu", precision="auto").classifier
    assert runner.model.precision is Precision.FP32 and "the model has no int8 variant" in runner.variant.reason


def test_on_cuda_auto_takes_fp16_only_after_a_passed_gpu_validation(passing: Path) -> None:
    manifest = classifier_manifest(passing)
    fp16 = manifest.variants[Precision.FP16]
    # The tiny bundle was exported without a GPU: its fp16 check did not run.
    choice = choose_variant(manifest, AUTO, Device.CUDA, CLASSIFY_BUDGET)
    assert choice.precision is Precision.FP32 and choice.reason.startswith("auto on cuda: fp16 has no GPU validation (")

    def with_report(**report: Any) -> ModelManifest:
        variant = replace(fp16, validation={"ran": True, "device": "cuda", **report})
        return replace(manifest, variants={**manifest.variants, Precision.FP16: variant})

    passed = choose_variant(with_report(passed=True), AUTO, Device.CUDA, CLASSIFY_BUDGET)
    assert passed.precision is Precision.FP16
    assert passed.reason == "auto on cuda: fp16 passed its GPU validation, so fp16 serves"
    failed = choose_variant(with_report(passed=False, failures=["logits differ by 0.2"]), AUTO, Device.CUDA, None)
    assert failed.precision is Precision.FP32
    assert "fp16 failed its GPU validation (logits differ by 0.2)" in failed.reason


def test_device_auto_chooses_for_the_device_the_probe_finds(passing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = classifier_manifest(passing)
    monkeypatch.setattr(providers, "_cuda_probed", True)
    monkeypatch.setattr(providers, "_cuda_failure", "no GPU")
    assert choose_variant(manifest, AUTO, Device.AUTO, CLASSIFY_BUDGET).precision is Precision.INT8
    monkeypatch.setattr(providers, "_cuda_failure", None)
    assert choose_variant(manifest, AUTO, Device.AUTO, CLASSIFY_BUDGET).reason.startswith("auto on cuda:")


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_json_outputs_say_which_variant_served_and_why(qa_failing: Path) -> None:
    common = ("--models", str(qa_failing), "--device", "cpu", "--precision", "auto", "--json")
    code, out, err = invoke("classify", "i love paris", "bad", *common)
    assert code == 0, err
    for item in json.loads(out):
        assert item["served"]["precision"] == "int8" and item["served"]["requested"] == "auto"
        assert item["served"]["provider"] == "CPUExecutionProvider"
    code, out, err = invoke("embed", "i love paris", *common)
    assert code == 0 and json.loads(out)[0]["served"]["precision"] == "int8", err
    code, out, err = invoke("qa", "--question", "where?", "--context", "in paris. the city is big.", *common)
    [item] = json.loads(out)
    assert code == 0 and item["served"]["precision"] == "fp32" and "below the budget" in item["served"]["reason"], err
    code, out, _ = invoke("classify", "i love paris", "--models", str(qa_failing), "--json")
    assert json.loads(out)[0]["served"]["reason"] == "fp32 was asked for"


def test_info_says_what_auto_serves_per_model(qa_failing: Path) -> None:
    code, out, err = invoke("info", "--models", str(qa_failing), "--device", "cpu", "--json")
    assert code == 0, err
    models = json.loads(out)["models"]
    assert {folder: m["auto"]["precision"] for folder, m in models.items()} == {
        "embedder": "int8",
        "classifier": "int8",
        "qa": "fp32",
    }
    assert models["qa"]["auto"]["device"] == "cpu" and "below the budget" in models["qa"]["auto"]["reason"]
    assert models["classifier"]["variants"]["int8"]["evaluation"]["imdb_heldout"]["count"] == 1000
    code, out, _ = invoke("info", "--models", str(qa_failing), "--device", "cpu")
    assert code == 0 and "--precision auto, qa: fp32 (auto on cpu: int8 answer agreement" in out
    code, out, _ = invoke("info", "--models", str(qa_failing), "--device", "cuda")
    assert "--precision auto, classifier: fp32 (auto on cuda: fp16 has no GPU validation" in out


def test_serve_takes_auto_and_its_health_says_what_serves(qa_failing: Path) -> None:
    pytest.importorskip("fastapi")
    from bertrt.serve.config import ServeConfig
    from bertrt.serve.host import ModelHost
    from bertrt.serve.metrics import ServeMetrics

    config = ServeConfig(models=qa_failing, device=Device.CPU, precision=PrecisionChoice.AUTO)
    assert ServeConfig.from_json(config.to_json()) == config
    host = ModelHost(config, ServeMetrics())
    host.start()
    try:
        assert host.wait_ready(120)
        details = host.describe()
        assert details["precision"] == "auto"
        assert {task: s["precision"] for task, s in details["served"].items()} == {
            "embed": "int8",
            "classify": "int8",
            "qa": "fp32",
        }
    finally:
        host.close(timeout=10)


def test_the_batcher_serves_the_variant_auto_chose(passing: Path) -> None:
    from bertrt.batcher import BatcherOptions, DynamicBatcher

    classifier = bertrt.load(passing, device="cpu", precision="auto").classifier
    named = bertrt.load(passing, device="cpu", precision="int8").classifier
    with DynamicBatcher(classifier, BatcherOptions(max_wait_ms=1)) as batched:
        assert [r.probabilities for r in batched(["i love paris", "bad"])] == [
            r.probabilities for r in named(["i love paris", "bad"])
        ]


# --- the evidence: `bertrt eval --record` ----------------------------------------------------


def test_eval_record_keeps_each_variant_s_figures_and_auto_reads_them(tiny_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "tiny"))
    code, out, err = invoke(
        "eval", "--task", "classify", "--limit", "30", "--models", str(bundle), "--record", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["recorded_in"] == str(bundle / "classifier" / "manifest.json")
    manifest = classifier_manifest(bundle)
    for precision in (Precision.FP32, Precision.INT8):
        variant = manifest.variants[precision]
        for data in ("imdb_heldout", "rotten_tomatoes"):
            entry = variant.evaluation[data]
            scores = report["datasets"][data]["systems"][f"bertrt-{precision.value}"]
            assert entry["label_agreement"] == scores["label_agreement"] and entry["count"] == 30
            assert entry["sha256"] == manifest.files[variant.file] and entry["reference"] == "pytorch"
    # 30 examples are too few to show a 98.5% agreement: auto says so and keeps fp32.
    runner = bertrt.load(bundle, device="cpu", precision="auto").classifier
    assert runner.model.precision is Precision.FP32
    assert "on 30 examples of imdb_heldout" in runner.variant.reason and "too few examples" in runner.variant.reason
    # The checksummed files are untouched: the bundle still verifies.
    code, out, _ = invoke("info", "--models", str(bundle), "--verify", "--json")
    assert code == 0 and all(m["checksums_ok"] for m in json.loads(out)["models"].values())


def test_eval_embed_measures_pooler_cosine_against_pytorch(tiny_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "tiny"))
    code, out, err = invoke("eval", "--task", "embed", "--limit", "12", "--models", str(bundle), "--record")
    assert code == 0, err
    assert "pooler cosine to PyTorch" in out and f"recorded in {bundle / 'embedder' / 'manifest.json'}" in out
    evaluation = ModelManifest.read(bundle / "embedder").variants[Precision.FP32].evaluation["imdb_heldout"]
    # fp32 is PyTorch's own arithmetic, to float rounding.
    assert evaluation["pooler_cosine_min"] > 0.9999 and evaluation["count"] == 12
    assert evaluation["pooler_cosine_min"] <= evaluation["pooler_cosine_p1"] <= evaluation["pooler_cosine_mean"]
    int8 = ModelManifest.read(bundle / "embedder").variants[Precision.INT8].evaluation["rotten_tomatoes"]
    assert -1.0 <= int8["pooler_cosine_min"] <= 1.0 and int8["device"] == "cpu"
