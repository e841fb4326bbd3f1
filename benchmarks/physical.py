"""The physical limit: the machine's fp32 matrix-multiply rate and a BERT forward's FLOPs.

A BERT encoder is almost all matrix multiplies, so the best rate a large fp32 GEMM reaches
on this machine bounds what any runtime can do. Dividing a forward pass's FLOPs by its
measured time says how close to that bound the runtime gets.

Example::

    rate = gemm_rate(2048, threads=2)          # {"numpy_gflops": ..., "ort_gflops": ...}
    flops = BertShape.from_config(model_dir / "config.json").forward_flops(32, 256)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bertrt.errors import BundleError


@dataclass(frozen=True)
class BertShape:
    """The dimensions of a BERT encoder that decide its arithmetic."""

    layers: int
    hidden: int
    intermediate: int

    @classmethod
    def from_config(cls, path: Path) -> BertShape:
        """Read ``num_hidden_layers``, ``hidden_size`` and ``intermediate_size`` from a
        ``config.json``."""
        try:
            config = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(int(config["num_hidden_layers"]), int(config["hidden_size"]), int(config["intermediate_size"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{path} does not describe a BERT encoder ({exc!r}); re-export the bundle.") from exc

    def forward_flops(self, batch: int, seq: int) -> float:
        """Multiply-add FLOPs (2 per MAC) of one encoder forward on ``batch`` x ``seq`` tokens.

        Per layer: Q, K, V and output projections (4 H^2 per token), the feed-forward pair
        (2 H I per token), and attention scores plus the weighted sum (2 S H per token).
        Embeddings, layer norms, softmax and the small heads are left out (<1%).

        >>> BertShape(1, 2, 4).forward_flops(1, 1)
        72.0
        """
        tokens = batch * seq
        per_token = 4 * self.hidden**2 + 2 * self.hidden * self.intermediate + 2 * seq * self.hidden
        return float(2 * self.layers * tokens * per_token)


def gemm_rate(size: int, *, threads: int, repeats: int = 5) -> dict[str, Any]:
    """The best fp32 ``size`` x ``size`` matrix-multiply rate (GFLOP/s) through NumPy's BLAS
    and through ONNX Runtime's MatMul (the kernels bertrt's graphs use), and the larger of
    the two as ``peak_gflops``. The ONNX Runtime figure is None without the ``onnx`` package."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size**3
    numpy_rate = flops / best_seconds(lambda: a @ b, repeats) / 1e9
    ort_rate = _ort_gemm_rate(a, b, threads, repeats, flops)
    return {
        "size": size,
        "threads": threads,
        "numpy_gflops": numpy_rate,
        "ort_gflops": ort_rate,
        "peak_gflops": max(numpy_rate, ort_rate or 0.0),
    }


def _ort_gemm_rate(a: np.ndarray, b: np.ndarray, threads: int, repeats: int, flops: float) -> float | None:
    try:
        from onnx import TensorProto, helper
    except ImportError:
        return None
    shape = list(a.shape)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, shape)],
    )
    # An IR version every ONNX Runtime of the last years reads (newer `onnx` writes newer).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {"a": a, "b": b}
    return flops / best_seconds(lambda: session.run(None, feeds), repeats) / 1e9


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn``, after one untimed call."""
    fn()  # warm-up: thread pools start, pages fault in
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
