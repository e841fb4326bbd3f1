"""int8 variants for CPUs whose outputs do not depend on the batch they are computed in.

ONNX Runtime's dynamic quantization (``quantize_dynamic``) picks one activation scale per
tensor per call, from the whole batch, padding included: the same text gets different
outputs alone, beside longer texts or padded to 256 tokens. The static scheme here builds
the same fast integer graph (QAttention, MatMulInteger, QEmbedLayerNormalization) but fixes
every activation scale from calibration texts, so a row is computed exactly the same way
whatever shares its batch; each file's batch invariance is measured before it is kept.

>>> feeds = calibration_feeds(Path("tokenizer.json"), texts, max_length=256)
>>> report = quantize_int8(Path("model.onnx"), Path("model.int8.onnx"), feeds)
>>> report["scheme"], report["batch_invariance_gap"]
('static', 0.0)

Keep accuracy-sensitive parts in fp32 with :class:`Int8Config` (``keep_fp32`` groups such
as ``"head"`` or ``"ffn-output"``, or explicit ``nodes_to_exclude``).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from bertrt.export.optimize import batch_invariance_gap, probe_feeds
from bertrt.export.rewrite import fold_biases, fuse_dequantization, layer_norm_form
from bertrt.export.smooth import smooth
from onnx import helper, numpy_helper

from bertrt.errors import ConfigError, ExportError, ValidationFailed
from bertrt.feeds import pad_rows, pad_token_id

# Node groups that can stay fp32, matched on optimum's exported node names and fused op types.
KEEP_GROUPS = ("head", "attention", "attention-output", "ffn-input", "ffn-output", "embeddings")
# Operators that hold int8 weights or quantize activations, counted in the report.
_INTEGER_OPS = (
    "QAttention",
    "QEmbedLayerNormalization",
    "MatMulIntegerToFloat",
    "MatMulInteger",
    "DynamicQuantizeLinear",
)
# The scheme every int8 file records: calibrated, fixed activation scales.
SCHEME = "static"
# Largest change of an output with batch make-up that still counts as invariant.
INVARIANCE_TOLERANCE = 1e-5
# Padding used by the invariance check each int8 file gets before it is reported.
_CHECK_PAD = 64
_CPU = ["CPUExecutionProvider"]


@dataclass(frozen=True)
class Int8Config:
    """Settings of an int8 variant.

    ``keep_fp32`` names groups of :data:`KEEP_GROUPS` left in fp32 (the task head by default:
    it is a sliver of the compute and its outputs are the answer). ``per_channel`` gives each
    weight column its own scale. ``reduce_range`` uses 7-bit weights, which avoids overflow
    on x86 CPUs without VNNI. ``smooth_alpha`` moves activation outliers into the weights
    before quantizing (:mod:`bertrt.export.smooth`), one strength or ``"auto"`` (chosen per
    product); ``None`` leaves the graph as it is.
    """

    keep_fp32: tuple[str, ...] = ("head",)
    nodes_to_exclude: tuple[str, ...] = ()
    per_channel: bool = True
    reduce_range: bool = False
    smooth_alpha: float | str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.keep_fp32) - set(KEEP_GROUPS))
        if unknown:
            raise ConfigError(f"Unknown keep_fp32 group(s) {unknown}; choose from {list(KEEP_GROUPS)}.")
        alpha = self.smooth_alpha
        if alpha is not None and alpha != "auto" and not (isinstance(alpha, float) and 0.0 < alpha < 1.0):
            raise ConfigError(f"smooth_alpha must be 'auto' or lie strictly between 0 and 1, not {alpha!r}.")


def quantize_int8(
    src: Path,
    dst: Path,
    calibration_feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
    config: Int8Config = Int8Config(),
) -> dict[str, Any]:
    """Write an int8 copy of the fp32 graph ``src`` (fused by ``optimize_fp32``, ideally).

    ``calibration_feeds`` are tokenized batches of real texts (:func:`calibration_feeds`)
    that fix the activation scales. Returns a JSON-ready report with the nodes kept in fp32,
    the quantized op counts and the measured batch-invariance gap; a file whose outputs
    change with batch make-up is deleted and a ValidationFailed raised.
    """
    if not src.is_file():
        raise ExportError(f"{src} does not exist; export and optimize the fp32 model first.")
    feeds = list(calibration_feeds or [])
    if not feeds:
        raise ConfigError("int8 quantization needs calibration_feeds (tokenized real texts); pass some.")
    nodes = onnx.load(str(src), load_external_data=False).graph.node
    # Named nodes a smaller model lacks (a layer it does not have) are left out of the report.
    present = {n.name for n in nodes}
    excluded = sorted(set(select_nodes(src, config.keep_fp32, nodes)) | (set(config.nodes_to_exclude) & present))
    report: dict[str, Any] = {
        "scheme": SCHEME,
        "kept_fp32": excluded,
        "per_channel": config.per_channel,
        "reduce_range": config.reduce_range,
    }
    with tempfile.TemporaryDirectory() as tmp:
        if config.smooth_alpha is not None:
            smoothed = onnx.load(str(src))
            report["smoothing"] = smooth(smoothed, feeds, config.smooth_alpha, excluded)
            src = Path(tmp) / "smoothed.onnx"
            onnx.save(smoothed, str(src))
            del smoothed
        model = _integer_graph(src, excluded, config)
        ranges, tokens = _activation_ranges(src, _dynamic_inputs(model), feeds)
    _fix_scales(model, ranges)
    report["rewrites"] = {"fuse_dequantization": fuse_dequantization(model), "fold_biases": fold_biases(model)}
    report["layer_norm"] = layer_norm_form(model)
    report["calibration"] = {"batches": len(feeds), "tokens": tokens, "tensors": len(ranges)}
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    report["quantized_ops"] = _quantized_ops(model)
    report["onnxruntime"] = ort.__version__
    report["batch_invariance_gap"] = gap = _probe_invariance(dst)
    if gap > INVARIANCE_TOLERANCE:
        dst.unlink()
        raise ValidationFailed(
            f"The int8 file's outputs change with batch make-up (by {gap:.3g}), so it was not kept; "
            "export without int8 (--precision fp32 --precision fp16) and report the model."
        )
    return report


def calibration_feeds(
    tokenizer_file: Path,
    texts: Sequence[str | tuple[str, str]],
    max_length: int,
    batch_size: int = 8,
) -> list[dict[str, np.ndarray]]:
    """Tokenize texts (or question/context pairs) into right-padded int64 batches.

    Rows are truncated at ``max_length`` and padded by :func:`bertrt.feeds.pad_rows` with the
    tokenizer's pad id, exactly as the runtime pads the texts it serves.

    >>> feeds = calibration_feeds(Path("tokenizer.json"), ["a fine film", "dull"], 128)
    >>> feeds[0]["input_ids"].shape
    (2, 5)
    """
    from tokenizers import Tokenizer

    if not texts:
        raise ConfigError("Calibration needs at least one text.")
    if max_length < 2 or batch_size < 1:
        raise ConfigError(f"Need max_length >= 2 and batch_size >= 1, not {max_length} and {batch_size}.")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    pad_id = pad_token_id(tokenizer)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    batches = []
    for start in range(0, len(texts), batch_size):
        encodings = tokenizer.encode_batch(list(texts[start : start + batch_size]))
        batches.append(pad_rows([e.ids for e in encodings], pad_id, [e.type_ids for e in encodings]).feeds())
    return batches


def select_nodes(model: Path, groups: Iterable[str], nodes: Sequence[onnx.NodeProto] | None = None) -> list[str]:
    """Names of the quantizable nodes of ``model`` in the given :data:`KEEP_GROUPS`;
    ``nodes`` are its graph's nodes where the caller has already read them.

    >>> select_nodes(Path("model.onnx"), ["head"])
    ['/qa_outputs/MatMul']
    """
    wanted = set(groups)
    unknown = sorted(wanted - set(KEEP_GROUPS))
    if unknown:
        raise ConfigError(f"Unknown node group(s) {unknown}; choose from {list(KEEP_GROUPS)}.")
    if nodes is None:
        nodes = onnx.load(str(model), load_external_data=False).graph.node
    if wanted and not any("/encoder/" in n.name for n in nodes):
        raise ConfigError(
            f"{model.name} does not name its nodes the way optimum's exporter does; "
            "list the nodes to keep in fp32 with nodes_to_exclude instead."
        )
    return [n.name for n in nodes if n.name and _groups_of(n) & wanted]


def _groups_of(node: onnx.NodeProto) -> set[str]:
    name, op = node.name, node.op_type
    if op == "Attention":
        return {"attention"}
    if op == "EmbedLayerNormalization" or (op == "Gather" and "/embeddings/" in name):
        return {"embeddings"}
    if op not in ("MatMul", "Gemm"):
        return set()
    if "/encoder/" not in name:
        return {"head"}  # classifier, QA span head and pooler
    if "/attention/output/dense/" in name:
        return {"attention-output"}
    if "/intermediate/dense/" in name:
        return {"ffn-input"}
    if "/output/dense/" in name:
        return {"ffn-output"}
    return set()


def _integer_graph(src: Path, excluded: Sequence[str], config: Int8Config) -> onnx.ModelProto:
    """ORT's dynamic quantization of ``src``: int8 weights, DynamicQuantizeLinear activations."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(
            src,
            out,
            weight_type=QuantType.QInt8,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            # quantize_dynamic first rewrites each Gemm as "<name>_MatMul" + "<name>_Add".
            nodes_to_exclude=[*excluded, *(f"{name}_MatMul" for name in excluded)],
            # Fused contrib ops have no ONNX shape inference; their outputs are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return onnx.load(str(out))


def _dynamic_inputs(model: onnx.ModelProto) -> list[str]:
    return [n.input[0] for n in model.graph.node if n.op_type == "DynamicQuantizeLinear"]


def _activation_ranges(
    src: Path, tensors: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]
) -> tuple[dict[str, tuple[float, float]], int]:
    """Min and max of each tensor over the real (unpadded) tokens of the calibration batches."""
    model = onnx.load(str(src))
    present = {o.name for o in model.graph.output}
    missing = [t for t in tensors if t not in present]
    model.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in missing)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        # Through a file, not bytes: the graph, its serialized copy and the session's weights
        # would otherwise all be held at once (4x the model at the peak).
        onnx.save(model, str(Path(tmp) / "calibration.onnx"))
        del model
        session = ort.InferenceSession(str(Path(tmp) / "calibration.onnx"), options, providers=_CPU)
    wanted = {i.name for i in session.get_inputs()}
    # Start at 0 so 0.0 is exactly representable, as DynamicQuantizeLinear guarantees.
    ranges = {t: (0.0, 0.0) for t in tensors}
    tokens = 0
    for batch in feeds:
        if "attention_mask" not in batch:
            raise ConfigError("Each calibration batch needs an attention_mask to tell tokens from padding.")
        mask = np.asarray(batch["attention_mask"]).astype(bool)
        tokens += int(mask.sum())
        outputs = session.run(list(tensors), {k: v for k, v in batch.items() if k in wanted})
        for name, value in zip(tensors, outputs):
            real = value[mask] if value.shape[:2] == mask.shape else value
            low, high = ranges[name]
            ranges[name] = (min(low, float(real.min())), max(high, float(real.max())))
    return ranges, tokens


def _fix_scales(model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]]) -> None:
    """Replace each DynamicQuantizeLinear by a QuantizeLinear with calibrated uint8 parameters.

    The scale and zero-point keep the tensor names the dynamic node produced, so QAttention
    and MatMulInteger consumers read constants instead of per-batch values.
    """
    nodes = []
    for node in model.graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        low, high = ranges[node.input[0]]
        scale = max((high - low) / 255.0, float(np.finfo(np.float32).tiny))
        zero_point = int(np.clip(np.rint(-low / scale), 0, 255))
        quantized, scale_name, zero_name = node.output
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(scale, dtype=np.float32), scale_name),
            numpy_helper.from_array(np.array(zero_point, dtype=np.uint8), zero_name),
        ])
        inputs = [node.input[0], scale_name, zero_name]
        nodes.append(helper.make_node("QuantizeLinear", inputs, [quantized], name=node.name))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    ops = Counter(n.op_type for n in model.graph.node)
    return {op: ops[op] for op in _INTEGER_OPS if ops[op]}


def _probe_invariance(path: Path) -> float:
    """Batch-invariance gap on random sequences; 0.0 for a file with fixed activation scales."""
    feeds = probe_feeds(path)
    pairs = zip(feeds["input_ids"], feeds["attention_mask"])
    rows = [ids[mask.astype(bool)].tolist() for ids, mask in pairs]
    return batch_invariance_gap(path, rows, pad_to=max(_CHECK_PAD, max(map(len, rows))))


__all__ = [
    "INVARIANCE_TOLERANCE",
    "KEEP_GROUPS",
    "Int8Config",
    "calibration_feeds",
    "quantize_int8",
    "select_nodes",
]
