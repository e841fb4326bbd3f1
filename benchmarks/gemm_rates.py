"""The rates of ONNX Runtime's fp32 and int8 GEMM kernels at a BERT encoder's own shapes.

Each of the encoder's products (query/key/value, attention output, the two feed-forward
matrices) runs alone in a one-node graph, on ``batch x seq`` token rows: ``MatMul`` in fp32
and ``MatMulIntegerToFloat`` (uint8 activations, int8 per-column weights, fp32 out: the
kernel of bertrt's int8 files). The best of a few calls gives each kernel's rate on this
machine, the ceiling for the int8 file's speed-up from its GEMMs. On Linux x86 it also says
whether the process holds the AMX tile permission that ONNX Runtime requests when it loads
and its integer GEMMs use (``ARCH_GET_XCOMP_PERM``).

Example::

    python -m bertrt.bench.gemm_rates --models models/minilm --batch 32 --seq 256 \\
        --out benchmarks/results/gemm-rates-minilm.json
"""

from __future__ import annotations

import argparse
import ctypes
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from bertrt.bench.machine import machine_info
from bertrt.bench.physical import BertShape, best_seconds
from bertrt.bench.report import write_json
from onnx import ModelProto, TensorProto, helper, numpy_helper

_ARCH_PRCTL = 158  # x86-64 syscall number
_ARCH_GET_XCOMP_PERM = 0x1022
_XFEATURE_XTILEDATA = 18


def encoder_products(shape: BertShape) -> dict[str, tuple[int, int]]:
    """(input width, output width) of each product of one encoder layer."""
    h, i = shape.hidden, shape.intermediate
    return {"qkv": (h, 3 * h), "attention-output": (h, h), "ffn-input": (h, i), "ffn-output": (i, h)}


def _graph(rows: int, k: int, n: int, integer: bool) -> tuple[ModelProto, np.ndarray]:
    rng = np.random.default_rng(0)
    if integer:
        names = ["a", "w", "a_scale", "w_scale", "a_zero"]
        initializers = [
            numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w"),
            numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
            numpy_helper.from_array(np.full(n, 0.01, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
        ]
        node = helper.make_node("MatMulIntegerToFloat", names, ["c"], domain="com.microsoft")
        a, a_type = rng.integers(0, 256, (rows, k)).astype(np.uint8), TensorProto.UINT8
    else:
        initializers = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")]
        node = helper.make_node("MatMul", ["a", "w"], ["c"])
        a, a_type = rng.standard_normal((rows, k)).astype(np.float32), TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "gemm", [helper.make_tensor_value_info("a", a_type, [rows, k])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [rows, n])], initializers,
    )
    imports = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=imports, ir_version=8), a


def gemm_rate(rows: int, k: int, n: int, integer: bool, threads: int = 2, repeats: int = 5) -> float:
    """Best rate, in G multiply-add operations x 2 per second, of one ``rows x k @ k x n`` product."""
    model, a = _graph(rows, k, n, integer)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return 2.0 * rows * k * n / best_seconds(lambda: session.run(None, {"a": a}), repeats) / 1e9


def amx_permission() -> bool | None:
    """Whether this process may use AMX tiles (ONNX Runtime asks for it on import); None off
    Linux x86-64 or where the kernel does not answer."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return None
    mask = ctypes.c_uint64(0)
    try:
        result = ctypes.CDLL(None, use_errno=True).syscall(_ARCH_PRCTL, _ARCH_GET_XCOMP_PERM, ctypes.byref(mask))
    except (OSError, AttributeError):
        return None
    return None if result != 0 else bool(mask.value >> _XFEATURE_XTILEDATA & 1)


def measure(shape: BertShape, rows: int, threads: int = 2, rounds: int = 2) -> list[dict[str, Any]]:
    """fp32 and int8 rates per product; the two kernels alternate, best of ``rounds``."""
    results = []
    for name, (k, n) in encoder_products(shape).items():
        rates: dict[bool, float] = {False: 0.0, True: 0.0}
        for _ in range(rounds):
            for integer in (False, True):
                rates[integer] = max(rates[integer], gemm_rate(rows, k, n, integer, threads))
        results.append({
            "product": name, "rows": rows, "k": k, "n": n,
            "fp32_gflops": round(rates[False], 1), "int8_gops": round(rates[True], 1),
            "int8_over_fp32": round(rates[True] / rates[False], 2),
        })
        print(f"{name:17} {rows} x {k} @ {k} x {n}: fp32 {rates[False]:7.1f} GFLOP/s, "
              f"int8 {rates[True]:7.1f} GOP/s ({rates[True] / rates[False]:.2f}x)", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertrt.bench.gemm_rates", description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models/minilm"), help="bundle folder")
    parser.add_argument("--batch", type=int, default=32, help="sequences")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--out", type=Path, help="results JSON")
    args = parser.parse_args(argv)
    config = args.models / "embedder" / "config.json"
    if not config.is_file():
        parser.error(f"{config} does not exist; pass --models with an exported bundle.")
    if args.batch < 1 or args.seq < 1:
        parser.error("--batch and --seq must be positive.")
    amx = amx_permission()
    print(f"AMX tile permission held: {amx}")
    rows = measure(BertShape.from_config(config), args.batch * args.seq, args.threads)
    if args.out:
        result = {"command": sys.argv, "machine": machine_info(), "amx_permission": amx, "products": rows}
        write_json(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
