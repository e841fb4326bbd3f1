"""Which BERT operators ONNX Runtime's CPU provider can run in bfloat16.

Each operator is put alone in a graph whose tensors are bfloat16 and opened in a CPU session
with graph optimizations off, so the answer is the kernel registry's, not a fusion's. The
finding it backs (no bf16 GEMM or attention on the CPU provider) is in benchmarks/README.md.

Example (also a command)::

    python -m bertrt.bench.bf16_probe
    probe_bf16_kernels()["MatMul"]   # None when a kernel exists, else ONNX Runtime's reason
"""

from __future__ import annotations

import json

import onnxruntime as ort
from onnx import ModelProto, TensorProto, ValueInfoProto, helper

_MS = "com.microsoft"
_BF16 = TensorProto.BFLOAT16


def _tensor(name: str, shape: list[int], elem_type: int = _BF16) -> ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _cases() -> dict[str, tuple[list[str], str, int, dict[str, list[int]], int, dict[str, int]]]:
    """Per operator: inputs, domain, opset, input shapes, output type, attributes."""
    hidden, two, heads = [1, 4, 8], [4, 8], {"num_heads": 2}
    return {
        "MatMul": (["a", "b"], "", 13, {"a": two, "b": [8, 8]}, _BF16, {}),
        "Gemm": (["a", "b"], "", 13, {"a": two, "b": [8, 8]}, _BF16, {}),
        "FusedMatMul": (["a", "b"], _MS, 13, {"a": two, "b": [8, 8]}, _BF16, {}),
        "Add": (["a", "b"], "", 14, {"a": two, "b": two}, _BF16, {}),
        "Softmax": (["a"], "", 13, {"a": two}, _BF16, {}),
        "Gelu": (["a"], _MS, 13, {"a": two}, _BF16, {}),
        "Attention": (["a", "w", "bias"], _MS, 13, {"a": hidden, "w": [8, 24], "bias": [24]}, _BF16, heads),
        "MultiHeadAttention": (["q", "k", "v"], _MS, 13, {"q": hidden, "k": hidden, "v": hidden}, _BF16, heads),
        "LayerNormalization": (["a", "g"], "", 17, {"a": two, "g": [8]}, _BF16, {}),
        "SkipLayerNormalization": (["a", "b", "g"], _MS, 13, {"a": hidden, "b": hidden, "g": [8]}, _BF16, {}),
        "Cast": (["a"], "", 13, {"a": two}, TensorProto.FLOAT, {"to": TensorProto.FLOAT}),
    }


def _graph(op: str) -> ModelProto:
    inputs, domain, opset, shapes, out_type, attributes = _cases()[op]
    node = helper.make_node(op, inputs, ["y"], domain=domain, **attributes)
    graph = helper.make_graph([node], op, [_tensor(n, shapes[n]) for n in inputs], [_tensor("y", [], out_type)])
    graph.output[0].type.tensor_type.ClearField("shape")
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=imports, ir_version=9)


def probe_bf16_kernels() -> dict[str, str | None]:
    """For each operator, ``None`` when the CPU provider opens its bfloat16 graph, otherwise
    the first line of ONNX Runtime's error (``NOT_IMPLEMENTED: Could not find ...``)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    found: dict[str, str | None] = {}
    for op in _cases():
        try:
            ort.InferenceSession(_graph(op).SerializeToString(), options, providers=["CPUExecutionProvider"])
            found[op] = None
        except Exception as exc:  # ORT's pybind errors share no base class but Exception
            found[op] = str(exc).splitlines()[0]
    return found


def main() -> None:
    """Print, per operator, whether the CPU provider has a bfloat16 kernel, as JSON."""
    found = probe_bf16_kernels()
    print(json.dumps({
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "bf16_cpu_kernel": {op: reason is None for op, reason in found.items()},
        "reasons": {op: reason for op, reason in found.items() if reason},
    }, indent=2))


if __name__ == "__main__":
    main()
