"""The CPU graph rewrites of ``bertrt.export.rewrite``: each keeps what the graph computes.

Small hand-built graphs pin down each rewrite's wiring.

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
from bertrt.export.rewrite import (
    fold_biases,
    fuse_dequantization,
    join_skip_layer_norm,
    layer_norm_form,
    split_skip_layer_norm,
)
from onnx import TensorProto, helper, numpy_helper

FLOAT_ROUNDING = 1e-5
HIDDEN = 16
MS = "com.microsoft"


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
