"""Graph fusion and fp16 conversion of exported BERT ONNX files, and the checks that prove them.

The fp32 variant is the exporter's graph run through ONNX Runtime's transformer optimizer:
attention, SkipLayerNorm, bias-GELU and the embedding layer norm become single fused
operators; then each SkipLayerNorm is split into a sum and ONNX's LayerNormalization, whose
CPU kernel is faster (:mod:`bertrt.export.rewrite`). The fp16 variant joins them again
(GPUs run the fused kernel fastest) and converts the graph to half precision while its
inputs and outputs keep their types, so the runtime feeds every variant the same arrays.

>>> stats = optimize_fp32(Path("raw.onnx"), Path("model.onnx"), num_heads=12, hidden_size=384)
>>> stats["fused_operators"]["Attention"]
6
>>> convert_fp16(Path("model.onnx"), Path("model.fp16.onnx"))["keep_io_types"]
True

Every function here checks what it wrote on the CPU provider; :func:`max_abs_diff`,
:func:`batch_invariance_gap` and :func:`cpu_runnable` are the reusable checks.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from bertrt.export.rewrite import join_skip_layer_norm, layer_norm_form, split_skip_layer_norm

from bertrt.errors import ConfigError, ExportError, ValidationFailed
from bertrt.feeds import DEFAULT_PAD_ID, pad_rows
from bertrt.types import Precision

# The operators the BERT fusions produce; their counts go into the manifest.
FUSED_OPERATORS = ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "BiasGelu")
# Level 1 runs only ONNX Runtime's basic rewrites (constant folding, redundant nodes), which
# are provider-independent; levels 2 and 99 bake CPU- or CUDA-only kernels into the file.
PORTABLE_OPT_LEVEL = 1
# Token lengths of the padded probe batch: mixed, with a single-token row.
PROBE_LENGTHS = (13, 6, 1)

_log = logging.getLogger(__name__)


def optimize_fp32(
    src: Path,
    dst: Path,
    num_heads: int,
    hidden_size: int,
    *,
    raw_attention_mask: bool = True,
    cpu_layer_norm: bool = True,
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Fuse a BERT graph with ONNX Runtime's transformer optimizer; return JSON-ready stats.

    ``num_heads`` and ``hidden_size`` come from the model config (0 lets the optimizer guess).
    ``raw_attention_mask`` keeps the 2-D 0/1 mask as the attention input: the 1-D "mask
    index" form (measured no faster on CPU) silently assumes right padding. Attention stays the
    fused ``Attention`` operator (the manifest's ``attention``).
    ``cpu_layer_norm`` splits each SkipLayerNormalization into a sum and a LayerNormalization
    (:func:`~bertrt.export.rewrite.split_skip_layer_norm`), the faster form on ORT's CPU provider.
    The written file is run against ``src`` on a padded mixed-length batch; a difference
    above ``tolerance`` raises :class:`ValidationFailed` and removes ``dst``.

    >>> optimize_fp32(Path("raw.onnx"), Path("model.onnx"), 12, 384)["max_abs_diff"]
    {'last_hidden_state': 3.1e-06, 'pooler_output': 1.2e-06}
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if num_heads < 0 or hidden_size < 0 or (hidden_size and num_heads and hidden_size % num_heads):
        raise ConfigError(
            f"num_heads={num_heads} and hidden_size={hidden_size} do not describe a BERT "
            "attention layer; pass the values of the model's config.json (or 0 to detect them)."
        )
    _require_file(src)
    options = FusionOptions("bert")
    options.use_raw_attention_mask(raw_attention_mask)
    # Symbolic shape inference copies the model and every weight (3x its size held until the
    # optimizer is collected: 2.7 GB for a 437 MB bert-base); the BERT fusions do not need it
    # (same fused operators without it) and the file is checked against its source below.
    options.enable_shape_inference = False
    optimized = optimize_model(
        str(src),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        optimization_options=options,
        opt_level=PORTABLE_OPT_LEVEL,
        use_gpu=False,
    )
    stats = optimized.get_fused_operator_statistics()
    counts = {op: stats.get(op, 0) for op in FUSED_OPERATORS} | {k: v for k, v in stats.items() if v}
    fully_fused = bool(optimized.is_fully_optimized(counts))
    split = split_skip_layer_norm(optimized.model) if cpu_layer_norm else 0
    layer_norm = layer_norm_form(optimized.model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    optimized.save_model_to_file(str(dst))
    if not fully_fused:
        # Still correct, just slower: the exporter's pattern was not recognised.
        _log.warning("%s was only partly fused: %s", src.name, counts)
    # The check below opens two sessions; the optimizer's graph (and its reference cycles) go first.
    del optimized
    gc.collect()
    diff = _checked_diff(src, dst, tolerance, "graph fusion")
    return {
        "optimizer": "onnxruntime.transformers",
        "onnxruntime": ort.__version__,
        "opt_level": PORTABLE_OPT_LEVEL,
        "attention_mask": "raw" if raw_attention_mask else "mask-index",
        "attention": "Attention",
        "layer_norm": layer_norm,
        "rewrites": {"split_skip_layer_norm": split},
        "fused_operators": counts,
        "fully_fused": fully_fused,
        "max_abs_diff": diff,
    }


def convert_fp16(
    src: Path,
    dst: Path,
    *,
    keep_fp32_op_types: Sequence[str] = (),
    keep_fp32_nodes: Sequence[str] = (),
) -> dict[str, Any]:
    """Convert an (ideally fused) fp32 graph to fp16 for GPUs; return JSON-ready stats.

    Inputs and outputs keep their types (int64 ids in, fp32 out). The fused kernels
    (SkipLayerNorm, EmbedLayerNorm, Attention's softmax) accumulate in fp32 internally, so by
    default only ONNX Runtime's own block list stays in fp32; ``keep_fp32_op_types`` and
    ``keep_fp32_nodes`` keep more. The file is then compared with ``src`` on the CPU provider
    when this build can run it (``cpu_check``); the CPU computes fp16 nodes in fp32, so fp16
    arithmetic itself is proven only on a GPU.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel

    _require_file(src)
    graph = onnx.load(str(src))
    joined = join_skip_layer_norm(graph)  # GPUs run the fused SkipLayerNormalization fastest
    model = BertOnnxModel(graph)
    block_list = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_op_types))
    model.convert_float_to_float16(
        keep_io_types=True, op_block_list=block_list, node_block_list=list(keep_fp32_nodes)
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    model.save_model_to_file(str(dst))
    fp16_initializers = _count_initializers(model.model, onnx.TensorProto.FLOAT16)
    layer_norm = layer_norm_form(model.model)
    # The CPU check opens two sessions; the converter's graph and shape-inference copies go first.
    del model, graph
    gc.collect()
    _check_io_types(src, dst)
    return {
        "converter": "onnxruntime.transformers.float16",
        "keep_io_types": True,
        "layer_norm": layer_norm,
        "rewrites": {"join_skip_layer_norm": joined},
        "keep_fp32_op_types": sorted(set(keep_fp32_op_types)),
        "keep_fp32_nodes": sorted(set(keep_fp32_nodes)),
        "fp16_initializers": fp16_initializers,
        "cpu_check": _cpu_check(src, dst),
    }


def probe_feeds(
    model: Path, lengths: Sequence[int] = PROBE_LENGTHS, seed: int = 0
) -> dict[str, np.ndarray]:
    """A right-padded batch of random token ids, one row per length, for the graph's inputs.

    >>> probe_feeds(Path("model.onnx"), lengths=(3, 1))["attention_mask"]
    array([[1, 1, 1],
           [1, 0, 0]])
    """
    if not lengths or min(lengths) < 1:
        raise ConfigError(f"Probe lengths must be positive integers, got {tuple(lengths)}.")
    rng = np.random.default_rng(seed)
    vocab = vocab_size(onnx.load(str(model), load_external_data=False))
    rows = [rng.integers(1, vocab, size=n).tolist() for n in lengths]
    return _pad(rows, max(lengths), _input_names(model))


def max_abs_diff(
    reference: Path, candidate: Path, feeds: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, float]:
    """Largest absolute difference per output between two graphs over some batches.

    Per-token outputs are compared on real tokens only: what a graph writes at padded
    positions is never read, and fused attention legitimately differs there.
    """
    ref, cand = cpu_session(reference), cpu_session(candidate)
    worst: dict[str, float] = {}
    for batch in feeds:
        mask = batch["attention_mask"].astype(bool)
        for name, a, b in zip(_output_names(ref), _run(ref, batch), _run(cand, batch)):
            gap = np.abs(a.astype(np.float64) - b.astype(np.float64))
            if name in _token_outputs(ref):
                gap = gap[mask]
            worst[name] = max(worst.get(name, 0.0), float(gap.max(initial=0.0)))
    return worst


def batch_invariance_gap(model: Path, sequences: Sequence[Sequence[int]], pad_to: int = 256) -> float:
    """How much any sequence's outputs change with the batch around it (0.0 is invariant).

    Each sequence runs alone, in one batch with all the others (padded to the longest) and
    in that batch padded to ``pad_to`` tokens; the largest difference on real tokens is
    returned. ``sequences`` are token ids, special tokens included.
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ConfigError("batch_invariance_gap needs at least one non-empty token sequence.")
    longest = max(len(s) for s in sequences)
    if pad_to < longest:
        raise ConfigError(f"pad_to={pad_to} is shorter than the longest sequence ({longest}).")
    session = cpu_session(model)
    names, token_outputs = _input_names(model), _token_outputs(session)

    def per_row(rows: Sequence[Sequence[int]], width: int) -> list[list[np.ndarray]]:
        outputs = dict(zip(_output_names(session), _run(session, _pad(rows, width, names))))
        return [
            [out[i, : len(row)] if name in token_outputs else out[i] for name, out in outputs.items()]
            for i, row in enumerate(rows)
        ]

    alone = [per_row([seq], len(seq))[0] for seq in sequences]
    gap = 0.0
    for width in (longest, pad_to):
        for solo, batched in zip(alone, per_row(sequences, width)):
            for x, y in zip(solo, batched):
                gap = max(gap, float(np.abs(x - y).max(initial=0.0)))
    return gap


def cpu_runnable(files: Mapping[Precision, Path]) -> dict[str, dict[str, Any]]:
    """Which variant files this ONNX Runtime build can load and run on the CPU provider.

    Returns, per precision value, ``{"runs": True}`` or ``{"runs": False, "reason": ...}``;
    JSON-ready for a manifest.

    >>> cpu_runnable({Precision.FP32: Path("model.onnx")})
    {'fp32': {'runs': True, 'onnxruntime': '1.31.1'}}
    """
    report: dict[str, dict[str, Any]] = {}
    for precision, path in files.items():
        try:
            session = cpu_session(path)
            _run(session, probe_feeds(path))
            report[precision.value] = {"runs": True, "onnxruntime": ort.__version__}
        except Exception as exc:  # ORT's pybind errors share no base class but Exception
            report[precision.value] = {"runs": False, "reason": _first_line(exc)}
    return report


def cpu_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU provider (``threads`` 0 lets ORT choose)."""
    _require_file(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _checked_diff(src: Path, dst: Path, tolerance: float, step: str) -> dict[str, float]:
    diff = max_abs_diff(src, dst, [probe_feeds(src)])
    worst = max(diff.values(), default=0.0)
    if not worst <= tolerance:  # also catches NaN
        dst.unlink(missing_ok=True)
        raise ValidationFailed(
            f"{step} changed {src.name}'s outputs by {worst:.3g} (> {tolerance:g}); "
            "report this graph, or export without that optimization."
        )
    return diff


def _cpu_check(src: Path, dst: Path) -> dict[str, Any]:
    try:
        diff = max_abs_diff(src, dst, [probe_feeds(src)])
        # The CPU provider runs fp16 nodes by casting them back to fp32, so this measures
        # the rounding of weights to fp16 and the conversion's wiring, not fp16 arithmetic.
        return {"ran": True, "max_abs_diff": diff, "note": "CPU provider: fp16 weights, fp32 arithmetic"}
    except Exception as exc:  # ORT's pybind errors share no base class but Exception
        return {"ran": False, "reason": f"the CPU provider cannot run this file: {_first_line(exc)}"}


def _check_io_types(src: Path, dst: Path) -> None:
    def io_types(path: Path) -> list[tuple[str, int]]:
        graph = onnx.load(str(path), load_external_data=False).graph
        return [(v.name, v.type.tensor_type.elem_type) for v in [*graph.input, *graph.output]]

    if io_types(src) != io_types(dst):
        dst.unlink(missing_ok=True)
        raise ExportError(f"fp16 conversion changed {src.name}'s input/output types; report this graph.")


def _count_initializers(model: onnx.ModelProto, elem_type: int) -> int:
    return sum(1 for t in model.graph.initializer if t.data_type == elem_type)


def vocab_size(model: onnx.ModelProto) -> int:
    """Rows of the word-embedding table, found from the node that consumes ``input_ids``."""
    casts = (n for n in model.graph.node if n.op_type == "Cast" and n.input[0] == "input_ids")
    ids = {"input_ids", *(n.output[0] for n in casts)}
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[1] in ids and node.input[0] in dims:
            return int(dims[node.input[0]][0])
        fused = node.op_type.endswith("EmbedLayerNormalization")
        if fused and node.input[0] in ids and node.input[2] in dims:
            return int(dims[node.input[2]][0])
    raise ExportError("No word-embedding table is fed by input_ids in this graph; is it a BERT export?")


def _pad(rows: Sequence[Sequence[int]], width: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Single-segment rows padded to ``width``, as the feeds the graph declares; probes have
    no tokenizer, so they pad with the default pad id."""
    feeds = pad_rows(rows, DEFAULT_PAD_ID, width=width).feeds()
    return {name: feeds[name] for name in names}


def _run(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    wanted = {i.name for i in session.get_inputs()}
    outputs: list[np.ndarray] = session.run(None, {k: v for k, v in feeds.items() if k in wanted})
    return outputs


def _input_names(model: Path) -> list[str]:
    graph = onnx.load(str(model), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return [v.name for v in graph.input if v.name not in initializers]


def _output_names(session: ort.InferenceSession) -> list[str]:
    return [o.name for o in session.get_outputs()]


def _token_outputs(session: ort.InferenceSession) -> set[str]:
    """Outputs with a symbolic second axis are per token (hidden states, span logits)."""
    return {o.name for o in session.get_outputs() if len(o.shape) >= 2 and isinstance(o.shape[1], str)}


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ExportError(f"{path} does not exist; convert the model to ONNX before optimizing it.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


__all__ = [
    "FUSED_OPERATORS",
    "batch_invariance_gap",
    "convert_fp16",
    "cpu_runnable",
    "cpu_session",
    "max_abs_diff",
    "optimize_fp32",
    "probe_feeds",
]
