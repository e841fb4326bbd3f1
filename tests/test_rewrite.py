"""The CPU graph rewrites of ``bertrt.export.rewrite``: each keeps what the graph computes.

Small hand-built graphs pin down each rewrite's wiring; a tiny BERT with random biases and
layer-norm parameters (the stock tiny source has zero biases and unit gains, which a misplaced
bias would not reveal) checks them on exported, fused and quantized files.

Tolerance: float32 rounding. The rewrites reorder additions ((x + b) + s for (x + s) + b) and
run the normalization in another kernel, so outputs of order one may differ by a few units in
the last place: :data:`FLOAT_ROUNDING` (1e-5 absolute) bounds that with room to spare, and is
far below what a dropped or doubled bias or gain would change (order 0.1 here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from bertrt.export.optimize import convert_fp16, max_abs_diff, optimize_fp32, probe_feeds
from bertrt.export.quantize import calibration_feeds, quantize_int8
from bertrt.export.rewrite import (
    fold_biases,
    fuse_dequantization,
    join_skip_layer_norm,
    layer_norm_form,
    split_skip_layer_norm,
)
from onnx import TensorProto, helper, numpy_helper

from bertrt.types import Precision, Task

FLOAT_ROUNDING = 1e-5
HIDDEN = 16
MS = "com.microsoft"
TEXTS = [
    "a very good film with great actors",
    "the plot was bad and the story was old",
    "i love this movie",
    "what a film",
    "they hate the actors but love the city of paris",
    "no",
]


# --- hand-built graphs ---------------------------------------------------------------------


def _vector(rng: np.random.Generator, name: str, size: int = HIDDEN, shift: float = 0.0) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(size) + shift).astype(np.float32), name)


def _model(nodes: list[onnx.NodeProto], inputs: list[str], initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "seq", HIDDEN]) for name in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)  # one this ONNX Runtime reads


def _skip_layer_norm_model(opset: int = 17, expose_sum: bool = False) -> onnx.ModelProto:
    """``y = SkipLayerNormalization(x, skip, gamma, beta, bias)`` with random parameters."""
    rng = np.random.default_rng(0)
    outputs = ["y", "", "", "s"] if expose_sum else ["y"]
    node = helper.make_node(
        "SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], outputs, name="sln", domain=MS,
        epsilon=1e-12,
    )
    inits = [_vector(rng, "gamma", shift=1.0), _vector(rng, "beta"), _vector(rng, "bias")]
    model = _model([node], ["x", "skip"], inits)
    if expose_sum:
        model.graph.output.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, None))
    model.opset_import[0].version = opset
    return model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], level: str = "ORT_ENABLE_ALL") -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs: list[np.ndarray] = session.run(None, feeds)
    return outputs


def _hidden_feeds(*names: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: rng.standard_normal((3, 7, HIDDEN)).astype(np.float32) for name in names}


def _ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def _ops_after_session_creation(model: onnx.ModelProto, tmp_path: Path) -> list[str]:
    """The node types ONNX Runtime's CPU provider runs, after all its graph optimizations."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _ops(onnx.load(options.optimized_model_filepath))


def test_split_skip_layer_norm_is_a_sum_then_layer_norm_with_equal_outputs() -> None:
    model = _skip_layer_norm_model()
    feeds = _hidden_feeds("x", "skip")
    (fused,) = _run(model, feeds)
    assert split_skip_layer_norm(model) == 1
    assert _ops(model) == ["Sum", "LayerNormalization"]
    assert list(model.graph.node[0].input) == ["x", "skip", "bias"]
    assert layer_norm_form(model) == "Sum + LayerNormalization"
    (split,) = _run(model, feeds)
    assert np.abs(fused - split).max() < FLOAT_ROUNDING
    assert np.abs(fused).max() > 1.0  # the comparison is on outputs of order one


def test_onnx_runtime_does_not_fuse_the_split_form_back(tmp_path: Path) -> None:
    """The reason for Sum: ORT's SkipLayerNormFusion turns Add + LayerNormalization back into
    the slow SkipLayerNormalization kernel when a session is created, but leaves Sum alone."""
    model = _skip_layer_norm_model()
    split_skip_layer_norm(model)
    assert "SkipLayerNormalization" not in _ops_after_session_creation(model, tmp_path)
    with_add = onnx.ModelProto()
    with_add.CopyFrom(model)
    residual = with_add.graph.node[0]
    residual.op_type = "Add"
    del residual.input[2]  # Add takes two inputs: x + skip, without the bias
    assert "SkipLayerNormalization" in _ops_after_session_creation(with_add, tmp_path)


def test_join_restores_the_fused_skip_layer_norm() -> None:
    model = _skip_layer_norm_model()
    original = onnx.ModelProto()
    original.CopyFrom(model)
    feeds = _hidden_feeds("x", "skip")
    split_skip_layer_norm(model)
    assert join_skip_layer_norm(model) == 1
    assert _ops(model) == ["SkipLayerNormalization"]
    assert list(model.graph.node[0].input) == list(original.graph.node[0].input)
    assert layer_norm_form(model) == "SkipLayerNormalization"
    assert np.array_equal(_run(model, feeds)[0], _run(original, feeds)[0])


def test_split_leaves_a_skip_layer_norm_whose_sum_is_read() -> None:
    model = _skip_layer_norm_model(expose_sum=True)
    assert split_skip_layer_norm(model) == 0
    assert _ops(model) == ["SkipLayerNormalization"]


def test_split_needs_onnx_layer_norm() -> None:
    model = _skip_layer_norm_model(opset=16)
    assert split_skip_layer_norm(model) == 0
    assert layer_norm_form(model) == "SkipLayerNormalization"


def _integer_chain_model(after: str) -> onnx.ModelProto:
    """``x`` quantized with a fixed scale, an int8 GEMM, its Cast -> Mul(scale product)
    dequantization, then ``after``: a bias Sum before a residual, or BiasGelu."""
    rng = np.random.default_rng(2)
    weight = rng.integers(-127, 128, size=(HIDDEN, HIDDEN)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(0.03, dtype=np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, dtype=np.uint8), "x_zero"),
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array((rng.random(HIDDEN) * 0.01 + 0.001).astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(HIDDEN, dtype=np.int8), "w_zero"),
        _vector(rng, "bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="q"),
        helper.make_node("MatMulInteger", ["xq", "w", "x_zero", "w_zero"], ["acc"], name="mm"),
        helper.make_node("Cast", ["acc"], ["acc_f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x_scale", "w_scale"], ["scale"], name="scales"),
        helper.make_node("Mul", ["acc_f", "scale"], ["product"], name="dequantize"),
    ]
    if after == "sum":
        nodes.append(helper.make_node("Sum", ["product", "skip", "bias"], ["y"], name="residual"))
    else:
        nodes.append(helper.make_node("BiasGelu", ["product", "bias"], ["y"], name="gelu", domain=MS))
    return _model(nodes, ["x", "skip"] if after == "sum" else ["x"], inits)


@pytest.mark.parametrize("after", ["sum", "bias-gelu"])
def test_dequantization_fuses_then_the_bias_folds_into_the_gemm(after: str) -> None:
    model = _integer_chain_model(after)
    feeds = _hidden_feeds(*(i.name for i in model.graph.input))
    (reference,) = _run(model, feeds, "ORT_DISABLE_ALL")
    assert fuse_dequantization(model) == 1
    assert _ops(model)[:2] == ["QuantizeLinear", "MatMulIntegerToFloat"]
    (fused,) = _run(model, feeds, "ORT_DISABLE_ALL")
    assert np.abs(fused - reference).max() < FLOAT_ROUNDING
    assert fold_biases(model) == 1
    gemm, last = model.graph.node[1], model.graph.node[-1]
    assert gemm.input[6] == "bias"
    assert (last.op_type, len(last.input)) == (("Sum", 2) if after == "sum" else ("Gelu", 1))
    (folded,) = _run(model, feeds)
    assert np.abs(folded - reference).max() < FLOAT_ROUNDING
    assert np.abs(reference).max() > 1.0


def test_a_bias_shared_by_two_products_is_folded_into_one() -> None:
    model = _integer_chain_model("sum")
    fuse_dequantization(model)
    gemm = model.graph.node[1]
    twin = helper.make_node(gemm.op_type, list(gemm.input), ["product2"], name="mm2", domain=MS)
    model.graph.node.insert(2, twin)
    model.graph.node[-1].input[1] = "product2"  # Sum(product, product2, bias)
    model.graph.input.pop()  # skip is no longer read
    feeds = _hidden_feeds("x")
    (reference,) = _run(model, feeds, "ORT_DISABLE_ALL")
    assert fold_biases(model) == 1
    assert sum(len(n.input) == 7 for n in model.graph.node if n.op_type == "MatMulIntegerToFloat") == 1
    assert np.abs(_run(model, feeds)[0] - reference).max() < FLOAT_ROUNDING


def test_a_dequantization_whose_scale_is_not_fixed_is_left_alone() -> None:
    model = _integer_chain_model("sum")
    quantize = model.graph.node[0]
    quantize.CopyFrom(helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "x_scale_d", "x_zero_d"], name="q"))
    assert fuse_dequantization(model) == 0
    assert "MatMulInteger" in _ops(model)


# --- a tiny exported BERT -------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT source whose biases, gains and shifts are all random and distinct."""
    import torch
    from bertrt.export.tiny import write_tiny_source
    from transformers import BertModel

    source = write_tiny_source(tmp_path_factory.mktemp("busy-source"))
    torch.manual_seed(3)
    model = BertModel.from_pretrained(source)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.5)
            elif "LayerNorm.weight" in name:
                parameter.normal_(1.0, 0.3)
    model.save_pretrained(source, safe_serialization=True)
    return source


@pytest.fixture(scope="module")
def busy_raw(busy_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Task, Path]:
    """Raw exports of the busy source as an encoder and a classifier (opset 17)."""
    import torch
    from bertrt.export.convert import export_onnx
    from transformers import BertForSequenceClassification, BertModel

    root = tmp_path_factory.mktemp("rewrite")
    classes = {Task.EMBED: BertModel, Task.CLASSIFY: BertForSequenceClassification}
    paths = {}
    for task, cls in classes.items():
        torch.manual_seed(1)
        paths[task] = export_onnx(cls.from_pretrained(busy_source), task, root / task.value, opset=17)
    return paths


@pytest.fixture(scope="module")
def busy_fused(busy_raw: dict[Task, Path]) -> dict[tuple[Task, bool], tuple[Path, dict]]:
    """Each task's fused fp32 file, with (True) and without (False) the layer-norm split."""
    out = {}
    for task, raw in busy_raw.items():
        for split in (True, False):
            dst = raw.with_name(f"model.{'split' if split else 'fused'}.onnx")
            out[task, split] = (dst, optimize_fp32(raw, dst, num_heads=2, hidden_size=32, cpu_layer_norm=split))
    return out


@pytest.fixture(scope="module")
def busy_feeds(busy_source: Path) -> list[dict[str, np.ndarray]]:
    return calibration_feeds(busy_source / "tokenizer.json", TEXTS, max_length=64, batch_size=3)


def _batches(path: Path) -> list[dict[str, np.ndarray]]:
    return [probe_feeds(path, lengths, seed) for seed, lengths in enumerate([(9, 2, 5, 1), (40, 40), (17, 3)])]


@pytest.mark.parametrize("task", [Task.EMBED, Task.CLASSIFY], ids=lambda t: t.value)
def test_split_layer_norms_keep_the_fused_outputs(
    busy_fused: dict[tuple[Task, bool], tuple[Path, dict]], task: Task, tmp_path: Path
) -> None:
    (split, report), (fused, unsplit_report) = busy_fused[task, True], busy_fused[task, False]
    assert report["rewrites"] == {"split_skip_layer_norm": 4}  # two per layer
    assert report["layer_norm"] == "Sum + LayerNormalization"
    assert unsplit_report["layer_norm"] == "SkipLayerNormalization"
    ops = _ops(onnx.load(str(split)))
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 4
    assert max(max_abs_diff(fused, split, _batches(fused)).values()) < FLOAT_ROUNDING
    assert "SkipLayerNormalization" not in _ops_after_session_creation(onnx.load(str(split)), tmp_path)


def test_fp16_gets_the_fused_skip_layer_norm_back(
    busy_fused: dict[tuple[Task, bool], tuple[Path, dict]], tmp_path: Path
) -> None:
    split, _ = busy_fused[Task.CLASSIFY, True]
    dst = tmp_path / "model.fp16.onnx"
    report = convert_fp16(split, dst)
    assert report["rewrites"] == {"join_skip_layer_norm": 4}
    assert report["layer_norm"] == "SkipLayerNormalization"
    ops = _ops(onnx.load(str(dst)))
    assert ops.count("SkipLayerNormalization") == 4 and "LayerNormalization" not in ops and "Sum" not in ops
    assert report["cpu_check"]["ran"] is True
    assert max(report["cpu_check"]["max_abs_diff"].values()) < 1e-2  # fp16 weights


@pytest.mark.parametrize("task", [Task.EMBED, Task.CLASSIFY], ids=lambda t: t.value)
def test_int8_rewrites_keep_the_integer_graph_outputs(
    busy_fused: dict[tuple[Task, bool], tuple[Path, dict]], busy_feeds: list[dict[str, np.ndarray]],
    task: Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The int8 file with every rewrite against one built with none of them (same scales)."""
    from bertrt.export import quantize

    split, _ = busy_fused[task, True]
    rewritten = tmp_path / "model.int8.onnx"
    report = quantize_int8(split, rewritten, busy_feeds)
    assert report["rewrites"] == {"fuse_dequantization": 6, "fold_biases": 6}  # three GEMMs per layer
    assert report["layer_norm"] == "Sum + LayerNormalization"
    ops = _ops(onnx.load(str(rewritten)))
    assert "BiasGelu" not in ops and "MatMulInteger" not in ops
    monkeypatch.setattr(quantize, "fuse_dequantization", lambda model: 0)
    monkeypatch.setattr(quantize, "fold_biases", lambda model: 0)
    plain = tmp_path / "model.plain.onnx"
    quantize_int8(split, plain, busy_feeds)
    assert "MatMulInteger" in _ops(onnx.load(str(plain)))
    diff = max_abs_diff(plain, rewritten, busy_feeds)
    assert max(diff.values()) < FLOAT_ROUNDING, diff


def test_the_bundle_manifest_records_each_variants_rewrites(tiny_bundle: Path) -> None:
    from bertrt.manifest import ModelManifest

    variants = ModelManifest.read(tiny_bundle / "classifier").variants
    fp32 = variants[Precision.FP32].optimization
    assert fp32["rewrites"] == {"split_skip_layer_norm": 4}
    assert fp32["layer_norm"] == "Sum + LayerNormalization" and fp32["attention"] == "Attention"
    if Precision.INT8 in variants:
        int8 = variants[Precision.INT8].optimization
        assert int8["rewrites"]["fuse_dequantization"] == 6
        assert int8["layer_norm"] == "Sum + LayerNormalization"
    if Precision.FP16 in variants:
        fp16 = variants[Precision.FP16].optimization
        assert fp16["rewrites"] == {"join_skip_layer_norm": 4}
        assert fp16["layer_norm"] == "SkipLayerNormalization"


def test_the_rewrite_ladder_steps_from_the_old_files_to_the_exported_ones(
    busy_fused: dict[tuple[Task, bool], tuple[Path, dict]], busy_feeds: list[dict[str, np.ndarray]],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``bertrt.bench.rewrite_ladder`` rebuilds, from files exported without the rewrites, the
    int8 graph the export now writes, each rung equal to the old file within rounding."""
    import shutil

    from bertrt.bench.rewrite_ladder import write_ladder
    from bertrt.export import quantize

    old = tmp_path / "old"
    old.mkdir()
    fused, _ = busy_fused[Task.EMBED, False]
    split, _ = busy_fused[Task.EMBED, True]
    shutil.copy(fused, old / "model.onnx")
    shutil.copy(fused.parent / "config.json", old / "config.json")
    exported = tmp_path / "exported.int8.onnx"
    quantize_int8(split, exported, busy_feeds)
    monkeypatch.setattr(quantize, "fuse_dequantization", lambda model: 0)
    monkeypatch.setattr(quantize, "fold_biases", lambda model: 0)
    quantize_int8(fused, old / "model.int8.onnx", busy_feeds)
    report = write_ladder(old, tmp_path / "ladder")
    assert list(report) == ["fp32-split.onnx", "int8-dq.onnx", "int8-dq-split.onnx", "int8-dq-split-fold.onnx"]
    assert [r["rewritten"] for r in report.values()] == [4, 6, 4, 6]
    assert all(max(r["max_abs_diff"].values()) < FLOAT_ROUNDING for r in report.values())  # type: ignore[attr-defined]
    top = sorted(_ops(onnx.load(str(tmp_path / "ladder" / "int8-dq-split-fold.onnx"))))
    assert top == sorted(_ops(onnx.load(str(exported))))
