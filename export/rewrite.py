"""Graph rewrites that put a fused BERT graph in the forms ONNX Runtime's CPU kernels run fastest.

Each one's kernel time before and after is profiled one rewrite at a time
(``benchmarks/README.md``, "CPU graph rewrites"):

- :func:`split_skip_layer_norm`: ``SkipLayerNormalization`` becomes ``Sum`` then ONNX
  ``LayerNormalization``. ORT's SkipLayerNormalization CPU kernel is a scalar loop (a float
  reduction the compiler may not vectorize, a division per element) and runs slower than
  the vectorized LayerNormalization kernel plus an element-wise sum. ``Sum`` rather than
  ``Add``: ORT's own SkipLayerNormFusion would fuse ``Add`` + LayerNormalization straight back
  at session creation. :func:`join_skip_layer_norm` undoes it for GPU files, where the fused
  kernel is the fast one.
- :func:`fuse_dequantization`: ``MatMulInteger -> Cast -> Mul(scale)`` becomes one
  ``MatMulIntegerToFloat``, which applies the scales in the GEMM's output stage.
- :func:`fold_biases`: a bias added after a ``MatMulIntegerToFloat`` (by a ``Sum`` before a
  layer norm, or by ``BiasGelu``) moves into the GEMM's output stage; ``BiasGelu`` becomes
  ``Gelu``, whose CPU kernel is vectorized.

Every function edits ``model`` in place and returns how many places it rewrote; none changes
what the graph computes beyond float rounding.

>>> model = onnx.load("model.onnx")
>>> split_skip_layer_norm(model)
12
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet

import onnx
from onnx import helper

MS_DOMAIN = "com.microsoft"
# ONNX's LayerNormalization exists from opset 17.
LAYER_NORM_OPSET = 17
# The Sum that feeds a split layer norm is named after it, so the split can be undone.
_SUM_SUFFIX = "/residual_sum"


def split_skip_layer_norm(model: onnx.ModelProto) -> int:
    """Each SkipLayerNormalization whose only used output is the normalized one becomes
    ``Sum(input, skip[, bias])`` then ``LayerNormalization(gamma, beta)``."""
    if _onnx_opset(model) < LAYER_NORM_OPSET:
        return 0
    nodes = list(model.graph.node)
    used = _consumed_names(model)
    rewritten: dict[int, list[onnx.NodeProto]] = {}
    for node in nodes:
        if node.op_type != "SkipLayerNormalization" or node.domain != MS_DOMAIN or len(node.input) < 3:
            continue
        if any(name in used for name in node.output[1:]):
            continue  # mean, inverse std or the sum feed something else
        data, skip, gamma = node.input[:3]
        beta = node.input[3] if len(node.input) > 3 else ""
        bias = node.input[4] if len(node.input) > 4 else ""
        total = f"{node.name}{_SUM_SUFFIX}"
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        norm_inputs = [total, gamma] + ([beta] if beta else [])
        rewritten[id(node)] = [
            helper.make_node("Sum", [data, skip] + ([bias] if bias else []), [total], name=total),
            helper.make_node(
                "LayerNormalization", norm_inputs, [node.output[0]], name=node.name, axis=-1, epsilon=epsilon
            ),
        ]
    _replace(model, nodes, rewritten)
    return len(rewritten)


def join_skip_layer_norm(model: onnx.ModelProto) -> int:
    """Undo :func:`split_skip_layer_norm`: each split pair becomes one SkipLayerNormalization."""
    nodes = list(model.graph.node)
    producers = _producers(nodes)
    rewritten: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    for node in nodes:
        if node.op_type != "LayerNormalization" or not node.input[0].endswith(_SUM_SUFFIX):
            continue
        total = producers.get(node.input[0])
        if total is None or total.op_type != "Sum" or len(total.input) not in (2, 3):
            continue
        beta = node.input[2] if len(node.input) > 2 else ""
        inputs = [total.input[0], total.input[1], node.input[1], beta] + list(total.input[2:])
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        rewritten[id(node)] = [
            helper.make_node(
                "SkipLayerNormalization", inputs, [node.output[0]], name=node.name, domain=MS_DOMAIN, epsilon=epsilon
            )
        ]
        removed.add(id(total))
    _replace(model, nodes, rewritten, removed)
    return len(rewritten)


def fuse_dequantization(model: onnx.ModelProto) -> int:
    """Fold each ``MatMulInteger -> Cast -> Mul(scale)`` chain into one ``MatMulIntegerToFloat``.

    ORT's own fusion (``MatMulIntegerToFloatFusion``) looks for the scale as a
    ``Mul(input_scale, weight_scale)`` node, which fixed activation scales turn into a constant
    that is folded away before the fusion runs; so these chains stayed three passes over each
    product. The fused kernel applies the per-column scales in the same float arithmetic (its
    outputs are bit-identical).
    """
    nodes = list(model.graph.node)
    producers, consumers = _producers(nodes), _consumers(nodes)
    outputs = {o.name for o in model.graph.output}
    rewritten: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    for node in nodes:
        chain = _dequantization_chain(node, producers, consumers, outputs)
        if chain is None:
            continue
        cast, mul, scales, input_scale = chain
        weight_scale = next(name for name in scales.input if name != input_scale)
        zero_points = [*node.input[2:4], "", ""][:2]
        inputs = [node.input[0], node.input[1], input_scale, weight_scale, *zero_points]
        rewritten[id(node)] = [
            helper.make_node("MatMulIntegerToFloat", inputs, [mul.output[0]], name=node.name, domain=MS_DOMAIN)
        ]
        removed |= {id(cast), id(mul), id(scales)}
    _replace(model, nodes, rewritten, removed)
    return len(rewritten)


def fold_biases(model: onnx.ModelProto) -> int:
    """Move the bias a ``Sum`` or ``BiasGelu`` adds after a ``MatMulIntegerToFloat`` into the
    GEMM (its optional ``bias`` input); a ``BiasGelu`` left without bias becomes ``Gelu``."""
    nodes = list(model.graph.node)
    consumers = _consumers(nodes)
    vectors = {t.name for t in model.graph.initializer if len(t.dims) == 1}
    rewritten: dict[int, list[onnx.NodeProto]] = {}
    for node in nodes:
        if node.op_type != "MatMulIntegerToFloat" or len(node.input) > 6:
            continue
        (user, *others) = consumers.get(node.output[0], [None])
        if others or user is None or id(user) in rewritten:
            continue  # a Sum of two products takes its bias into one of them only
        if user.op_type == "Sum" and len(user.input) == 3 and node.output[0] in user.input[:2]:
            if user.input[2] not in vectors:
                continue
            bias, replacement = user.input[2], helper.make_node("Sum", user.input[:2], user.output, name=user.name)
        elif user.op_type == "BiasGelu" and user.domain == MS_DOMAIN and user.input[0] == node.output[0]:
            if user.input[1] not in vectors:
                continue
            bias = user.input[1]
            replacement = helper.make_node("Gelu", user.input[:1], user.output, name=user.name, domain=MS_DOMAIN)
        else:
            continue
        gemm = helper.make_node(
            node.op_type, [*node.input, *([""] * (6 - len(node.input))), bias], node.output, name=node.name,
            domain=node.domain,
        )
        rewritten[id(node)] = [gemm]
        rewritten[id(user)] = [replacement]
    _replace(model, nodes, rewritten)
    return len(rewritten) // 2


def layer_norm_form(model: onnx.ModelProto) -> str:
    """How ``model`` normalizes its residual sums, as a manifest records it:
    ``"Sum + LayerNormalization"`` once split, ``"SkipLayerNormalization"`` when fused, or
    ``"none"``."""
    ops = {(node.op_type, node.input[0].endswith(_SUM_SUFFIX)) for node in model.graph.node if node.input}
    if ("LayerNormalization", True) in ops:
        return "Sum + LayerNormalization"
    if any(op == "SkipLayerNormalization" for op, _ in ops):
        return "SkipLayerNormalization"
    return "none"


def _dequantization_chain(
    node: onnx.NodeProto,
    producers: Mapping[str, onnx.NodeProto],
    consumers: Mapping[str, Sequence[onnx.NodeProto]],
    graph_outputs: set[str],
) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto, str] | None:
    """The Cast, Mul and scale-product Mul after a MatMulInteger whose input a QuantizeLinear
    with a fixed scale produced, when nothing else reads them; and that input scale's name."""
    if node.op_type != "MatMulInteger":
        return None
    (cast, *others) = consumers.get(node.output[0], [None])
    if others or cast is None or cast.op_type != "Cast":
        return None
    (mul, *others) = consumers.get(cast.output[0], [None])
    if others or mul is None or mul.op_type != "Mul":
        return None
    scale = next((name for name in mul.input if name != cast.output[0]), "")
    scales = producers.get(scale)
    if scales is None or scales.op_type != "Mul" or len(consumers.get(scale, [])) != 1:
        return None
    if {node.output[0], cast.output[0], scale} & graph_outputs:
        return None
    quantize = producers.get(node.input[0])
    if quantize is None or quantize.op_type != "QuantizeLinear" or quantize.input[1] not in scales.input:
        return None
    return cast, mul, scales, quantize.input[1]


def _replace(
    model: onnx.ModelProto,
    nodes: Sequence[onnx.NodeProto],
    rewritten: Mapping[int, list[onnx.NodeProto]],
    removed: AbstractSet[int] = frozenset(),
) -> None:
    """Swap each of ``nodes`` whose id is in ``rewritten`` for its replacements (the graph
    stays topologically sorted: replacements read what the node read), drop those in
    ``removed``, and make the result ``model``'s node list.

    Nodes are told apart by ``id()`` of the wrappers in ``nodes``: protobuf hands out a new
    wrapper on every access to ``model.graph.node``, so every lookup must use this one list.
    """
    kept = [copy for node in nodes if id(node) not in removed for copy in rewritten.get(id(node), [node])]
    kept = [_detached(node) for node in kept]
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _detached(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _producers(nodes: Sequence[onnx.NodeProto]) -> dict[str, onnx.NodeProto]:
    return {out: node for node in nodes for out in node.output if out}


def _consumers(nodes: Sequence[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _consumed_names(model: onnx.ModelProto) -> set[str]:
    return {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}


def _onnx_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
