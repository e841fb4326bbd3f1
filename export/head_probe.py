"""The hidden states a task head reads, from both sides: PyTorch and an ONNX file.

An untrained head's logits are near-ties, so which label or span wins says nothing about a
variant; what the encoder hands the head does. :func:`head_input_hook` captures the input
of a PyTorch model's head (its last ``Linear``); :func:`expose_head_input` writes a copy of an
ONNX file with the same tensor as an extra output, found by walking back from a logits
output to the matrix product that made it.

Example::

    with head_input_hook(model) as captured:
        model(**feeds)
    captured[0].shape                     # (batch, seq, hidden) for a span head
    probe = expose_head_input(Path("model.int8.onnx"), "start_logits", workdir)
    OrtSession(probe).run(feeds)[HEAD_INPUT]   # the same tensor from the ONNX file
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from bertrt.errors import ExportError

# The name the exposed tensor gets as a graph output.
HEAD_INPUT = "head_input"
_PRODUCTS = ("MatMul", "Gemm")
# Operators a head's output passes through on its way to a logits output, or that hold a
# quantized copy of the head's input.
_QUANTIZED_PRODUCTS = ("MatMulInteger",)
_QUANTIZERS = ("QuantizeLinear", "DynamicQuantizeLinear")


@contextmanager
def head_input_hook(model: Any) -> Iterator[list[Any]]:
    """Capture the input of ``model``'s head (its last ``torch.nn.Linear``) on the next call.

    Yields a list that holds the captured tensor once the model has run.
    """
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ExportError(f"{type(model).__name__} has no Linear layer, so it has no head to check.")
    captured: list[Any] = []
    handle = linears[-1].register_forward_hook(lambda _module, args, _out: captured.append(args[0].detach()))
    try:
        yield captured
    finally:
        handle.remove()


def expose_head_input(onnx_path: Path, logits: str, workdir: Path) -> Path:
    """Write ``workdir/<name>`` : ``onnx_path`` with the tensor its head reads as the extra
    output :data:`HEAD_INPUT`; returns that path.

    The head is the ``MatMul`` or ``Gemm`` that ``logits`` comes from (through ``Add``,
    ``Split``, ``Squeeze``, ``Cast`` ...); a quantized head is followed back to the float
    tensor it quantizes. The copy costs the file's size on disk and, while it is written, in
    memory.
    """
    model = onnx.load(str(onnx_path), load_external_data=False)
    tensor, elem_type = _head_input(model.graph, logits)
    # An Identity gives the tensor a fixed output name whatever the exporter called it.
    model.graph.node.append(helper.make_node("Identity", [tensor], [HEAD_INPUT], name="bertrt_head_input"))
    model.graph.output.append(helper.make_tensor_value_info(HEAD_INPUT, elem_type, None))
    target = workdir / onnx_path.name
    if _has_external_data(model):
        # External weights are read relative to the file, which moves: bring them along.
        onnx.load_external_data_for_model(model, str(onnx_path.parent))
        onnx.save(model, str(target), save_as_external_data=True, location=f"{target.name}.data")
    else:
        onnx.save(model, str(target))
    return target


def _head_input(graph: onnx.GraphProto, logits: str) -> tuple[str, int]:
    producers = {output: node for node in graph.node for output in node.output}
    initializers = {t.name: t.data_type for t in graph.initializer}
    name = logits
    for _ in range(len(graph.node)):
        node = producers.get(name)
        if node is None:
            break
        data = [i for i in node.input if i in producers and producers[i].op_type != "Constant"]
        if not data:
            break
        if node.op_type in _PRODUCTS:
            weights = [initializers[i] for i in node.input if i in initializers]
            return data[0], weights[0] if weights else onnx.TensorProto.FLOAT
        if node.op_type in _QUANTIZED_PRODUCTS and producers[data[0]].op_type in _QUANTIZERS:
            return producers[data[0]].input[0], onnx.TensorProto.FLOAT
        name = data[0]
    raise ExportError(f"No matrix product feeds the graph output {logits!r}; cannot find the head's input.")


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
