"""One rule decides where a variant is validated, behind one CUDA probe, for `bertrt export`,
`bertrt validate` and `bertrt eval` alike.

The rule is tested with a fake probe, so a machine without a GPU proves the GPU branch's
choices too; the commands are tested through the probe's remembered verdict.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertrt import providers
from bertrt.cli import app
from bertrt.errors import DeviceError
from bertrt.manifest import ModelManifest
from bertrt.types import Device, Precision

FP32, FP16, INT8 = Precision.FP32, Precision.FP16, Precision.INT8
AUTO, CPU, CUDA = Device.AUTO, Device.CPU, Device.CUDA


def gpu() -> None:
    return None  # the probe's answer where CUDA runs


def no_gpu() -> str:
    return "no GPU here"


@pytest.mark.parametrize(
    ("requested", "probe", "expected"),
    [
        (AUTO, gpu, {FP32: CUDA, FP16: CUDA, INT8: CPU}),
        (AUTO, no_gpu, {FP32: CPU, FP16: None, INT8: CPU}),
        (CUDA, gpu, {FP32: CUDA, FP16: CUDA, INT8: CPU}),
        (CPU, gpu, {FP32: CPU, FP16: None, INT8: CPU}),
        (CPU, no_gpu, {FP32: CPU, FP16: None, INT8: CPU}),
    ],
    ids=["auto-gpu", "auto-no-gpu", "cuda-gpu", "cpu-gpu", "cpu-no-gpu"],
)
def test_where_each_precision_is_validated(requested: Device, probe: object, expected: dict) -> None:
    from bertrt.export.variants import validation_device

    for precision, device in expected.items():
        placement = validation_device(precision, requested, probe=probe)  # type: ignore[arg-type]
        assert placement.device is device, (precision, placement)
        assert placement.reason  # every choice says why


def test_fp16_without_a_gpu_is_not_run_and_says_why() -> None:
    from bertrt.export.variants import validation_device

    assert validation_device(FP16, AUTO, probe=no_gpu).reason == "fp16 is validated on a CUDA GPU and no GPU here"
    assert "--device cpu" in validation_device(FP16, CPU, probe=gpu).reason


@pytest.mark.parametrize("precision", [FP32, FP16, INT8])
def test_cuda_without_a_gpu_is_one_clear_error(precision: Precision) -> None:
    from bertrt.export.variants import validation_device

    with pytest.raises(DeviceError, match=r"^--device cuda was asked for but no GPU here; use --device auto or cpu"):
        validation_device(precision, CUDA, probe=no_gpu)


def test_the_cpu_is_never_probed_for_cuda() -> None:
    from bertrt.export.variants import validation_device

    def probe() -> str | None:
        raise AssertionError("--device cpu must not touch CUDA")

    assert validation_device(FP32, CPU, probe=probe).device is CPU


def test_the_probe_graph_is_the_identity_graph_it_claims() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    assert model.SerializeToString() == providers._PROBE_GRAPH


def test_the_export_recorded_what_the_rule_says(tiny_bundle: Path) -> None:
    from bertrt.export.variants import validation_device

    for folder in ("embedder", "classifier", "qa"):
        for precision, variant in ModelManifest.read(tiny_bundle / folder).variants.items():
            placement = validation_device(precision)
            report = variant.validation
            if placement.device is None:
                assert report["ran"] is False and report["reason"] == placement.reason
            else:
                assert report["ran"] is True and report["device"] == placement.device.value


@pytest.fixture
def without_gpu(monkeypatch: pytest.MonkeyPatch) -> str:
    """The process's CUDA probe answers "no GPU" (whatever this machine has)."""
    reason = "the CUDA provider did not start (no GPU in this test)"
    monkeypatch.setattr(providers, "_cuda_probed", True)
    monkeypatch.setattr(providers, "_cuda_failure", reason)
    return reason


@pytest.mark.parametrize("command", [["validate"], ["eval", "--task", "classify", "--limit", "4"]])
def test_validate_and_eval_refuse_cuda_without_a_gpu(tiny_bundle: Path, without_gpu: str, command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--models", str(tiny_bundle), "--device", "cuda", "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: --device cuda was asked for but {without_gpu}; use --device auto or cpu, "
                     "or install onnxruntime-gpu with CUDA and cuDNN on a GPU machine."]


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_validate_places_every_variant_by_the_rule(tiny_bundle: Path, without_gpu: str, device: str) -> None:
    result = CliRunner().invoke(app, ["validate", "--models", str(tiny_bundle), "--device", device, "--json"])
    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout)["checks"]
    assert len(checks) == 9
    for check in checks:
        if check["precision"] == "fp16":
            assert check["ran"] is False and check["passed"] is None
            assert check["reason"].endswith(without_gpu if device == "auto" else "--device cpu was asked for")
        else:
            assert check["ran"] is True and check["device"] == "cpu" and check["passed"] is True


def test_eval_runs_each_variant_where_the_rule_says(tiny_bundle: Path, without_gpu: str) -> None:
    result = CliRunner().invoke(
        app, ["eval", "--task", "classify", "--limit", "8", "--models", str(tiny_bundle), "--device", "auto", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["not_run"] == {"bertrt-fp16": f"fp16 is validated on a CUDA GPU and {without_gpu}"}
    systems = report["datasets"]["imdb_heldout"]["systems"]
    assert set(systems) == {"pytorch", "bertrt-fp32", "bertrt-int8"}
    assert systems["bertrt-fp32"]["device"] == systems["bertrt-int8"]["device"] == "cpu"
