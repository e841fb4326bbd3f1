"""Move activation outliers into the weights before int8 quantization (SmoothQuant).

A BERT layer's inputs have a few channels whose values are tens of times larger than the
rest. With one activation scale per tensor, those channels set the scale and every other
channel is left a handful of integer levels. Smoothing divides input channel ``j`` of a
matrix product by ``s_j`` and multiplies row ``j`` of its weight by the same ``s_j``, so the
product is unchanged in exact arithmetic, with

    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

(Xiao et al., "SmoothQuant", 2022). ``alpha`` near 1 flattens the activations and puts
the outliers in the weights, which have a scale per output column.

Where the division can be folded into the graph it is: the input of an attention output
projection is the attention's context, linear in the value projection, so the value
columns and biases absorb it. Everywhere else (a layer norm's output also feeds the
residual, a GELU is not linear) a ``Mul`` by ``1 / s`` is inserted on the path to the
quantized product only.

>>> model = onnx.load("model.onnx")
>>> report = smooth(model, feeds, alpha="auto", excluded=["/qa_outputs/MatMul"])
>>> report["products"], report["folded"], report["inserted"]
(24, 6, 18)
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from bertrt.errors import ConfigError

# ``smooth(alpha=AUTO)`` picks a strength per product from this grid (or none at all).
AUTO = "auto"
ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)
# Calibration tokens kept per activation for that search.
SAMPLE_ROWS = 2048
# Bounds on a channel's factor: a channel that is (nearly) always zero must not blow up.
_FACTOR_RANGE = (1e-4, 1e4)
_CPU = ["CPUExecutionProvider"]


@dataclass(frozen=True)
class ProductPlan:
    """What smoothing does to one matrix product: its strength (``None``: left as it is),
    the channel factors, and the simulated relative int8 error of the product afterwards."""

    node: str
    alpha: float | None
    factors: np.ndarray | None
    error: float


def smooth(
    model: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    alpha: float | str,
    excluded: Sequence[str] = (),
) -> dict[str, Any]:
    """Smooth every encoder ``Attention`` and ``MatMul`` of ``model`` in place, except the
    ``excluded`` node names, with activations measured on the calibration ``feeds``.

    ``alpha`` is one migration strength for every product, or ``"auto"``: each product gets
    the strength from :data:`ALPHA_GRID` (or no smoothing at all) whose simulated int8
    product is closest to the fp32 one on the calibration activations.

    Returns a JSON-ready report: ``alpha``, the number of products smoothed, how many
    divisions were folded into a value projection or inserted as a ``Mul``, and the strength
    and simulated relative int8 error of each product.
    """
    plans = plan(model, feeds, alpha, excluded)
    report: dict[str, Any] = {"alpha": alpha, **apply(model, plans)}
    report["chosen"] = {p.node: p.alpha for p in plans}
    report["errors"] = {p.node: float(f"{p.error:.3g}") for p in plans}
    return report


def plan(
    model: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    alpha: float | str,
    excluded: Sequence[str] = (),
) -> list[ProductPlan]:
    """The smoothing of each encoder product of ``model`` (see :func:`smooth`), in graph order."""
    if alpha != AUTO and not (isinstance(alpha, float) and 0.0 < alpha < 1.0):
        raise ConfigError(f"The smoothing alpha must lie strictly between 0 and 1, or be 'auto', not {alpha!r}.")
    weights = {i.name: i for i in model.graph.initializer}
    skip = set(excluded)
    products = [
        n
        for n in model.graph.node
        if n.name not in skip
        and n.op_type in ("MatMul", "Attention")
        and len(n.input) > 1
        and n.input[1] in weights
        and (n.op_type == "Attention" or "/encoder/" in n.name)
    ]
    if not products:
        return []
    stats = activation_statistics(model, sorted({n.input[0] for n in products}), feeds)
    plans = []
    for node in products:
        weight = numpy_helper.to_array(weights[node.input[1]])
        activations = stats[node.input[0]]
        candidates = [None, *ALPHA_GRID] if alpha == AUTO else [float(alpha)]
        sample = activations.sample()
        reference = sample @ weight.astype(np.float64)
        peak_w = np.abs(weight).max(axis=1)
        best: ProductPlan | None = None
        for strength in candidates:
            factors = None if strength is None else _factors(activations.peak, peak_w, strength)
            error = _product_error(sample, weight, activations, factors, reference)
            if best is None or error < best.error:
                best = ProductPlan(node.name, strength, factors, error)
        assert best is not None
        plans.append(best)
    return plans


def apply(model: onnx.ModelProto, plans: Sequence[ProductPlan]) -> dict[str, int]:
    """Rescale each planned product's weight rows and divide its input: folded into the
    value projection where the input is an attention's context, else by an inserted ``Mul``."""
    weights = {i.name: i for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    producers = {out: n for n in model.graph.node for out in n.output}
    report = {"products": 0, "folded": 0, "inserted": 0}
    new_nodes: dict[str, onnx.NodeProto] = {}
    for step in plans:
        if step.factors is None:
            continue  # smoothing would not lower this product's quantization error
        node, factors = by_name[step.node], step.factors
        weight = numpy_helper.to_array(weights[node.input[1]])
        weights[node.input[1]].CopyFrom(
            numpy_helper.from_array((weight * factors[:, None]).astype(weight.dtype), node.input[1])
        )
        report["products"] += 1
        source = producers.get(node.input[0])
        if source is not None and source.op_type == "Attention" and _only_consumer(model, node):
            _fold_into_values(source, weights, factors)
            report["folded"] += 1
            continue
        scaled = f"{node.name}/smooth_output"
        scale_name = f"{node.name}/smooth_scale"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / factors).astype(np.float32), scale_name))
        divide = helper.make_node("Mul", [node.input[0], scale_name], [scaled], name=f"{node.name}/smooth")
        new_nodes[node.name] = divide
        node.input[0] = scaled
        report["inserted"] += 1
    ordered = []
    for node in model.graph.node:
        if node.name in new_nodes:
            ordered.append(new_nodes[node.name])
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return report


@dataclass
class ChannelStatistics:
    """Per-channel extremes of one activation over the calibration tokens, and a sample of
    its rows (tokens) for simulating the quantized product."""

    low: np.ndarray
    high: np.ndarray
    rows: list[np.ndarray] = field(default_factory=list)

    @property
    def peak(self) -> np.ndarray:
        """Largest absolute value of each channel."""
        peak: np.ndarray = np.maximum(np.abs(self.low), np.abs(self.high))
        return peak

    def sample(self) -> np.ndarray:
        return np.concatenate(self.rows).astype(np.float64)


def activation_statistics(
    model: onnx.ModelProto, tensors: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, ChannelStatistics]:
    """Channel extremes of ``tensors`` over the real (unpadded) tokens of ``feeds``, with up
    to :data:`SAMPLE_ROWS` of those tokens kept for the ``"auto"`` search."""
    # The probe outputs are added to ``model`` itself only while it is written out: a copy of
    # a large model's graph would double the export's peak memory.
    outputs = len(model.graph.output)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors if t not in present
    )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "smooth-probe.onnx"
        try:
            onnx.save(model, str(path))
        finally:
            del model.graph.output[outputs:]
        session = ort.InferenceSession(str(path), options, providers=_CPU)
    wanted = {i.name for i in session.get_inputs()}
    per_batch = max(1, SAMPLE_ROWS // max(1, len(feeds)))
    rng = np.random.default_rng(0)
    stats: dict[str, ChannelStatistics] = {}
    for batch in feeds:
        mask = np.asarray(batch["attention_mask"]).astype(bool)
        outputs = session.run(list(tensors), {k: v for k, v in batch.items() if k in wanted})
        for name, value in zip(tensors, outputs):
            real = value[mask] if value.shape[:2] == mask.shape else value.reshape(-1, value.shape[-1])
            low, high = real.min(axis=0), real.max(axis=0)
            if name not in stats:
                stats[name] = ChannelStatistics(low, high)
            else:
                stats[name].low = np.minimum(stats[name].low, low)
                stats[name].high = np.maximum(stats[name].high, high)
            keep = rng.choice(len(real), size=min(per_batch, len(real)), replace=False)
            stats[name].rows.append(real[np.sort(keep)])
    return stats


def _product_error(
    sample: np.ndarray,
    weight: np.ndarray,
    activations: ChannelStatistics,
    factors: np.ndarray | None,
    reference: np.ndarray,
) -> float:
    """Relative squared error of the product with static uint8 activations (one scale, from
    the calibration extremes, as the export fixes them) and per-column symmetric int8 weights."""
    scale = np.ones(weight.shape[0]) if factors is None else factors
    x = sample / scale
    low = min(0.0, float((activations.low / scale).min()))
    high = max(0.0, float((activations.high / scale).max()))
    step = max((high - low) / 255.0, 1e-12)
    zero = np.clip(np.rint(-low / step), 0, 255)
    x_hat = (np.clip(np.rint(x / step) + zero, 0, 255) - zero) * step
    w = weight.astype(np.float64) * scale[:, None]
    w_step = np.maximum(np.abs(w).max(axis=0) / 127.0, 1e-12)
    w_hat = np.clip(np.rint(w / w_step), -127, 127) * w_step
    return float(np.sum((x_hat @ w_hat - reference) ** 2) / max(np.sum(reference**2), 1e-30))


def _factors(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    low, high = _FACTOR_RANGE
    activation = np.maximum(activation_max.astype(np.float64), 1e-8)
    weight = np.maximum(weight_max.astype(np.float64), 1e-8)
    return np.clip(activation**alpha / weight ** (1.0 - alpha), low, high)


def _only_consumer(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    return sum(node.input[0] in n.input for n in model.graph.node) == 1


def _fold_into_values(attention: onnx.NodeProto, weights: Mapping[str, onnx.TensorProto], factors: np.ndarray) -> None:
    """Divide the value columns (and biases) of a packed QKV ``Attention`` by ``factors``."""
    hidden = factors.shape[0]
    for name in attention.input[1:3]:
        packed = numpy_helper.to_array(weights[name]).copy()
        if packed.shape[-1] != 3 * hidden:
            raise ConfigError(f"{attention.name} does not pack Q, K and V in one {3 * hidden}-wide weight.")
        packed[..., 2 * hidden :] /= factors.astype(packed.dtype)
        weights[name].CopyFrom(numpy_helper.from_array(packed, name))


__all__ = ["ALPHA_GRID", "AUTO", "ChannelStatistics", "ProductPlan", "activation_statistics", "apply", "plan", "smooth"]
