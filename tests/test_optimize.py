"""Fused fp32, fp16 and int8 variants of tiny random BERTs: structure, parity, batch invariance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from bertrt.export.optimize import (
    batch_invariance_gap,
    convert_fp16,
    cpu_runnable,
    cpu_session,
    max_abs_diff,
    optimize_fp32,
    probe_feeds,
)
from bertrt.export.quantize import Int8Config, calibration_feeds, quantize_int8, select_nodes

from bertrt.errors import ConfigError, ValidationFailed
from bertrt.types import Precision, Task

TASKS = (Task.EMBED, Task.CLASSIFY, Task.QA)
# Short review-like texts for calibration and batch make-up checks (tiny vocabulary words).
TEXTS = [
    "a very good film with great actors",
    "the plot was bad and the story was old",
    "i love this movie",
    "what a film",
    "they hate the actors but love the city of paris",
    "the first year was good, the last was bad",
    "no",
    "how did the immune system of the body fight the disease cells?",
]


@pytest.fixture(scope="module")
def raw_models(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Task, Path]:
    """Raw exporter output of the three task models built on the tiny source."""
    import torch
    from bertrt.export.convert import export_onnx
    from transformers import BertForQuestionAnswering, BertForSequenceClassification, BertModel

    classes = {Task.EMBED: BertModel, Task.CLASSIFY: BertForSequenceClassification, Task.QA: BertForQuestionAnswering}
    root = tmp_path_factory.mktemp("optimize")
    paths = {}
    for task in TASKS:
        torch.manual_seed(1)  # the heads are random: seed them for a repeatable file
        model = classes[task].from_pretrained(tiny_source)
        paths[task] = export_onnx(model, task, root / task.value, opset=17)
    return paths


@pytest.fixture(scope="module")
def fused(raw_models: dict[Task, Path]) -> dict[Task, tuple[Path, dict]]:
    """The fused fp32 file of each task and optimize_fp32's report."""
    out = {}
    for task, raw in raw_models.items():
        dst = raw.with_name("model.fused.onnx")
        out[task] = (dst, optimize_fp32(raw, dst, num_heads=2, hidden_size=32))
    return out


@pytest.fixture(scope="module")
def tokenizer_file(tiny_source: Path) -> Path:
    return tiny_source / "tokenizer.json"


@pytest.fixture(scope="module")
def feeds(tokenizer_file: Path) -> list[dict[str, np.ndarray]]:
    return calibration_feeds(tokenizer_file, TEXTS, max_length=64, batch_size=3)


@pytest.fixture(scope="module")
def int8_static(
    fused: dict[Task, tuple[Path, dict]], feeds: list[dict[str, np.ndarray]]
) -> dict[Task, tuple[Path, dict]]:
    out = {}
    for task, (src, _) in fused.items():
        dst = src.with_name("model.int8.onnx")
        out[task] = (dst, quantize_int8(src, dst, feeds))
    return out


def _token_ids(tokenizer_file: Path, texts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    return [tokenizer.encode(text).ids for text in texts]


# --- fp32 fusion -------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.value)
def test_fusion_replaces_attention_and_layer_norms(fused: dict[Task, tuple[Path, dict]], task: Task) -> None:
    path, report = fused[task]
    counts = report["fused_operators"]
    assert counts["Attention"] == 2  # one per layer
    assert counts["SkipLayerNormalization"] > 0
    assert counts["EmbedLayerNormalization"] == 1
    assert report["fully_fused"] is True
    nodes = onnx.load(str(path)).graph.node
    assert "Softmax" not in {n.op_type for n in nodes}
    # Each residual layer norm is split for the CPU (tests/test_rewrite.py): every
    # LayerNormalization left reads a residual Sum, none is an unfused chain.
    norms = [n for n in nodes if n.op_type == "LayerNormalization"]
    assert len(norms) == counts["SkipLayerNormalization"] == report["rewrites"]["split_skip_layer_norm"]
    producers = {out: n.op_type for n in nodes for out in n.output}
    assert {producers[n.input[0]] for n in norms} == {"Sum"}


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.value)
def test_fused_graph_matches_raw_on_padded_batches(
    raw_models: dict[Task, Path], fused: dict[Task, tuple[Path, dict]], task: Task
) -> None:
    raw, (path, report) = raw_models[task], fused[task]
    batches = [probe_feeds(raw, lengths, seed) for seed, lengths in enumerate([(1,), (9, 2, 5, 1), (40, 40), (17, 3)])]
    diff = max_abs_diff(raw, path, batches)
    assert set(diff) == {o.name for o in onnx.load(str(raw)).graph.output}
    assert max(diff.values()) < 1e-4
    assert max(report["max_abs_diff"].values()) < 1e-4


def test_fused_graph_keeps_dynamic_axes(fused: dict[Task, tuple[Path, dict]]) -> None:
    path, _ = fused[Task.QA]
    session = cpu_session(path)
    assert all(isinstance(axis, str) for i in session.get_inputs() for axis in i.shape)
    for lengths in [(1,), (7, 7, 7, 7, 7), (100, 3)]:
        start, end = session.run(None, probe_feeds(path, lengths))
        assert start.shape == end.shape == (len(lengths), max(lengths))


def test_optimize_rejects_inconsistent_dimensions(raw_models: dict[Task, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="num_heads"):
        optimize_fp32(raw_models[Task.EMBED], tmp_path / "x.onnx", num_heads=3, hidden_size=32)
    assert not (tmp_path / "x.onnx").exists()


# --- fp16 ------------------------------------------------------------------------------


def test_fp16_keeps_io_types_and_runs_on_cpu(fused: dict[Task, tuple[Path, dict]], tmp_path: Path) -> None:
    src, _ = fused[Task.CLASSIFY]
    dst = tmp_path / "model.fp16.onnx"
    report = convert_fp16(src, dst)
    model = onnx.load(str(dst))
    kinds = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert kinds == {"input_ids": onnx.TensorProto.INT64, "attention_mask": onnx.TensorProto.INT64,
                     "token_type_ids": onnx.TensorProto.INT64, "logits": onnx.TensorProto.FLOAT}
    assert report["fp16_initializers"] > 0
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert dst.stat().st_size < 0.7 * src.stat().st_size
    # This ORT build runs fp16 graphs on the CPU provider; the check below is the numbers.
    assert report["cpu_check"]["ran"] is True
    assert report["cpu_check"]["max_abs_diff"]["logits"] < 1e-2


def test_fp16_can_keep_named_op_types_in_fp32(fused: dict[Task, tuple[Path, dict]], tmp_path: Path) -> None:
    src, _ = fused[Task.EMBED]
    dst = tmp_path / "model.fp16.onnx"
    convert_fp16(src, dst, keep_fp32_op_types=["SkipLayerNormalization"])
    model = onnx.load(str(dst))
    fp16 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    gammas = [n.input[2] for n in model.graph.node if n.op_type == "SkipLayerNormalization"]
    assert gammas and not fp16 & set(gammas)
    assert fp16  # everything else still converted


# --- int8 ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.value)
def test_static_int8_is_batch_invariant(
    int8_static: dict[Task, tuple[Path, dict]], tokenizer_file: Path, task: Task
) -> None:
    path, report = int8_static[task]
    assert report["quantized_ops"]["QAttention"] == 2
    assert "DynamicQuantizeLinear" not in report["quantized_ops"]
    assert report["batch_invariance_gap"] == 0.0
    probe, *short = _token_ids(tokenizer_file, TEXTS)
    # Alone, in a batch of short texts, and in that batch padded to 256 tokens.
    assert batch_invariance_gap(path, [probe, *short[:4]], pad_to=256) <= 1e-5


def test_dynamic_int8_depends_on_batch_make_up(
    fused: dict[Task, tuple[Path, dict]], tokenizer_file: Path, tmp_path: Path
) -> None:
    """Why the scales are fixed, and proof that the invariance check can fail: ONNX Runtime's
    own dynamic quantization of the same graph answers differently in different batches."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, _ = fused[Task.EMBED]
    dst = tmp_path / "model.dynamic.onnx"
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    assert any(n.op_type == "DynamicQuantizeLinear" for n in onnx.load(str(dst)).graph.node)
    assert batch_invariance_gap(dst, _token_ids(tokenizer_file, TEXTS), pad_to=256) > 1e-5


def test_an_int8_file_whose_scales_are_not_fixed_is_refused(
    fused: dict[Task, tuple[Path, dict]], feeds: list[dict[str, np.ndarray]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bertrt.export import quantize

    monkeypatch.setattr(quantize, "_fix_scales", lambda model, ranges: None)  # scales stay per batch
    dst = tmp_path / "model.int8.onnx"
    with pytest.raises(ValidationFailed, match="change with batch make-up"):
        quantize_int8(fused[Task.EMBED][0], dst, feeds)
    assert not dst.exists()


def test_dequantization_is_fused_into_the_integer_matmuls(
    fused: dict[Task, tuple[Path, dict]], int8_static: dict[Task, tuple[Path, dict]],
    feeds: list[dict[str, np.ndarray]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No Cast/Mul scaffolding is left around the integer GEMMs, and folding it changes no bit."""
    from bertrt.export import quantize

    path, report = int8_static[Task.CLASSIFY]
    nodes = onnx.load(str(path)).graph.node
    assert report["quantized_ops"]["MatMulIntegerToFloat"] == report["rewrites"]["fuse_dequantization"] == 6
    assert not {"MatMulInteger", "Mul"} & {n.op_type for n in nodes}
    assert {n.input[0] for n in nodes if n.op_type == "Cast"} == {"input_ids", "attention_mask", "token_type_ids"}
    monkeypatch.setattr(quantize, "fuse_dequantization", lambda model: 0)
    unfused = tmp_path / "model.unfused.onnx"
    quantize_int8(fused[Task.CLASSIFY][0], unfused, feeds)
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(unfused)).graph.node}
    assert max(max_abs_diff(unfused, path, feeds).values()) == 0.0


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.value)
def test_static_int8_stays_close_to_fp32(
    fused: dict[Task, tuple[Path, dict]], int8_static: dict[Task, tuple[Path, dict]],
    feeds: list[dict[str, np.ndarray]], task: Task,
) -> None:
    src, _ = fused[task]
    path, _ = int8_static[task]
    diff = max_abs_diff(src, path, feeds)
    assert 0.0 < max(diff.values()) < 0.1  # quantized (not a copy), and not broken
    assert path.stat().st_size < 0.5 * src.stat().st_size


def test_head_group_stays_fp32(
    fused: dict[Task, tuple[Path, dict]], int8_static: dict[Task, tuple[Path, dict]]
) -> None:
    src, _ = fused[Task.QA]
    path, report = int8_static[Task.QA]
    head = select_nodes(src, ["head"])
    assert head and all("/encoder/" not in name for name in head)
    assert report["kept_fp32"] == head
    matmuls = {n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"}
    assert set(head) <= matmuls


def test_keep_groups_and_explicit_nodes_are_excluded(
    fused: dict[Task, tuple[Path, dict]], feeds: list[dict[str, np.ndarray]], tmp_path: Path
) -> None:
    src, _ = fused[Task.CLASSIFY]
    ffn_out = select_nodes(src, ["ffn-output"])
    assert len(ffn_out) == 2 and all("/output/dense/" in n and "/attention/" not in n for n in ffn_out)
    attention = select_nodes(src, ["attention"])
    dst = tmp_path / "model.int8.onnx"
    config = Int8Config(keep_fp32=("head", "ffn-output"), nodes_to_exclude=tuple(attention))
    report = quantize_int8(src, dst, feeds, config)
    assert set(ffn_out) | set(attention) <= set(report["kept_fp32"])
    assert "QAttention" not in report["quantized_ops"]
    assert report["quantized_ops"]["MatMulIntegerToFloat"] == 4  # attention output + FFN input, 2 layers


def test_smoothing_leaves_the_fp32_outputs_unchanged(
    fused: dict[Task, tuple[Path, dict]], feeds: list[dict[str, np.ndarray]], tmp_path: Path
) -> None:
    """Smoothing rescales channels, never what the graph computes: value projections absorb
    the attention-output factors, a Mul carries the others."""
    from bertrt.export.smooth import activation_statistics, smooth

    src, _ = fused[Task.QA]
    model = onnx.load(str(src))
    head = select_nodes(src, ["head"])
    report = smooth(model, feeds, alpha=0.8, excluded=head)
    assert (report["products"], report["folded"], report["inserted"]) == (8, 2, 6)  # 2 layers x 4 products
    assert set(report["chosen"].values()) == {0.8} and len(report["errors"]) == 8
    smoothed = tmp_path / "model.smoothed.onnx"
    onnx.save(model, str(smoothed))
    assert max(max_abs_diff(src, smoothed, feeds).values()) < 1e-4
    # The inputs the Muls produce are flatter than the originals: the largest channel moved closer to the rest.
    muls = [n for n in model.graph.node if n.op_type == "Mul" and n.name.endswith("/smooth")]
    before = activation_statistics(onnx.load(str(src)), [m.input[0] for m in muls], feeds)
    after = activation_statistics(model, [m.output[0] for m in muls], feeds)
    spread = [after[m.output[0]].peak.max() / after[m.output[0]].peak.mean() for m in muls]
    original = [before[m.input[0]].peak.max() / before[m.input[0]].peak.mean() for m in muls]
    assert np.mean(spread) < np.mean(original)


def test_smoothed_int8_is_batch_invariant_and_reports_its_smoothing(
    fused: dict[Task, tuple[Path, dict]], feeds: list[dict[str, np.ndarray]], tmp_path: Path
) -> None:
    from bertrt.export.smooth import ALPHA_GRID

    src, _ = fused[Task.QA]
    dst = tmp_path / "model.int8.onnx"
    kept = select_nodes(src, ["head"])[0], "/bert/encoder/layer.0/output/dense/MatMul"
    report = quantize_int8(src, dst, feeds, Int8Config(nodes_to_exclude=kept, smooth_alpha="auto"))
    smoothing = report["smoothing"]
    assert report["batch_invariance_gap"] == 0.0
    assert 0.0 < max(max_abs_diff(src, dst, feeds).values()) < 0.1
    # A product kept in fp32 is neither smoothed nor quantized; "auto" chose from the grid or left one alone.
    assert set(kept) <= set(report["kept_fp32"]) and kept[1] not in smoothing["chosen"]
    assert kept[1] in {n.name for n in onnx.load(str(dst)).graph.node if n.op_type == "MatMul"}
    assert len(smoothing["chosen"]) == 7 and set(smoothing["chosen"].values()) <= {None, *ALPHA_GRID}
    with pytest.raises(ConfigError, match="alpha"):
        Int8Config(smooth_alpha=1.5)


def test_static_int8_needs_calibration(fused: dict[Task, tuple[Path, dict]], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibration"):
        quantize_int8(fused[Task.EMBED][0], tmp_path / "model.int8.onnx")


def test_int8_config_rejects_unknown_groups() -> None:
    with pytest.raises(ConfigError, match=r"Unknown keep_fp32 group\(s\) \['classifier'\]"):
        Int8Config(keep_fp32=("classifier",))


def test_calibration_feeds_are_padded_batches(tokenizer_file: Path) -> None:
    batches = calibration_feeds(tokenizer_file, TEXTS[:5] + [("what film?", "a good film")], max_length=8, batch_size=4)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 2]
    for batch in batches:
        assert batch["input_ids"].dtype == np.int64 and batch["input_ids"].shape[1] <= 8
        assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape
    pair = batches[1]
    assert pair["token_type_ids"][1].max() == 1  # the context of a pair is segment 1
    with pytest.raises(ConfigError):
        calibration_feeds(tokenizer_file, [], max_length=8)


# --- CPU support -----------------------------------------------------------------------


def test_cpu_runnable_reports_each_variant(
    fused: dict[Task, tuple[Path, dict]], int8_static: dict[Task, tuple[Path, dict]], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.onnx"
    model = onnx.load(str(fused[Task.EMBED][0]))
    model.graph.node[-1].op_type = "NoSuchOperator"
    onnx.save(model, str(broken))
    report = cpu_runnable({Precision.FP32: fused[Task.EMBED][0], Precision.INT8: int8_static[Task.EMBED][0],
                           Precision.FP16: broken})
    assert report["fp32"]["runs"] is True and report["int8"]["runs"] is True
    assert report["fp16"]["runs"] is False and "NoSuchOperator" in report["fp16"]["reason"]
