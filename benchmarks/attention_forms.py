"""Which form of attention ONNX Runtime's CPU provider runs fastest for bertrt's files.

The export fuses each encoder layer's attention into one ``Attention`` node (``QAttention`` in
the int8 files). ONNX Runtime has two other ways to run the same computation, and this
benchmark rewrites a fused file into each and times them call by call against the original:

- ``mha``: the query/key/value product as its own GEMM (``MatMul``, or ``MatMulIntegerToFloat``
  with the int8 weights), a ``Split``, then ``MultiHeadAttention`` with the padding mask;
- ``mha-no-mask``: the same without the mask, the only case in which the CPU kernel takes its
  flash-attention path. It ignores padding, so it is timed on unpadded batches only: it shows
  what that path is worth, not a form the runtime could serve;
- ``plain``: the attention core in standard operators (batched ``MatMul``, ``Softmax``), as the
  unfused export has it.

Each row reports the median time per call and the largest output difference from the fused
file on real tokens (fp32 forms agree within rounding; in an int8 file a rounding difference
before a ``QuantizeLinear`` can move a value by one quantization step). The finding it backs,
and the choice the export makes (``optimization.attention`` in the manifest), are in
benchmarks/README.md.

Example::

    python -m bertrt.bench.attention_forms models/minilm/embedder/model.int8.onnx \\
        --out benchmarks/results/attention-forms-int8.json --save /tmp/forms-int8
    python -m bertrt.bench.op_profile /tmp/forms-int8/mha.onnx --batch 32 --seq 256
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from bertrt.bench.machine import machine_info
from bertrt.bench.report import write_json
from bertrt.export.optimize import vocab_size
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

FORMS = ("fused", "mha", "mha-no-mask", "plain")
SHAPES = ((1, 11), (1, 128), (8, 128), (32, 256))
_MS = "com.microsoft"
_MASK_FREE = {"mha-no-mask"}


def rewrite_attention(model: ModelProto, form: str) -> ModelProto:
    """A copy of ``model`` whose ``Attention``/``QAttention`` nodes run as ``form``."""
    if form not in FORMS:
        raise ValueError(f"Unknown attention form {form!r}; choose from {list(FORMS)}.")
    out = ModelProto()
    out.CopyFrom(model)
    if form == "fused":
        return out
    graph = out.graph
    weights = {t.name: t for t in graph.initializer}
    nodes: list[NodeProto] = []
    for node in graph.node:
        if node.op_type not in ("Attention", "QAttention"):
            nodes.append(node)
            continue
        heads = next(a.i for a in node.attribute if a.name == "num_heads")
        qkv, bias, mask, width = _qkv_product(node, weights, nodes)
        q, k, v = (f"{node.name}_{part}" for part in "qkv")
        nodes.append(helper.make_node("Split", [qkv], [q, k, v], name=f"{node.name}_split", axis=-1, num_outputs=3))
        if form == "plain":
            nodes += _plain_core(node.name, q, k, v, bias, mask, heads, width // heads, node.output[0], graph)
        else:
            inputs = [q, k, v, bias, "" if form in _MASK_FREE else mask]
            while inputs[-1] == "":
                inputs.pop()
            nodes.append(helper.make_node(
                "MultiHeadAttention", inputs, [node.output[0]], name=f"{node.name}_mha", domain=_MS, num_heads=heads
            ))
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _qkv_product(
    node: NodeProto, weights: dict[str, TensorProto], nodes: list[NodeProto]
) -> tuple[str, str, str, int]:
    """Append the query/key/value GEMM of ``node``; return its output, the bias still to add
    ("" when the GEMM adds it), the mask input and the hidden width."""
    qkv = f"{node.name}_qkv"
    if node.op_type == "Attention":
        x, weight, bias, mask = node.input[:4]
        nodes.append(helper.make_node("MatMul", [x, weight], [qkv], name=f"{node.name}_gemm"))
    else:  # QAttention: the input arrives quantized; MatMulIntegerToFloat adds the bias itself
        xq, weight, gemm_bias, x_scale, w_scale, mask, x_zero, w_zero = node.input[:8]
        nodes.append(helper.make_node(
            "MatMulIntegerToFloat", [xq, weight, x_scale, w_scale, x_zero, w_zero, gemm_bias], [qkv],
            name=f"{node.name}_gemm", domain=_MS,
        ))
        bias = ""
    return qkv, bias, mask, int(weights[weight].dims[1]) // 3


def _plain_core(
    name: str, q: str, k: str, v: str, bias: str, mask: str, heads: int, head_size: int, output: str, graph: Any
) -> list[NodeProto]:
    """Scaled dot-product attention over ``heads`` heads in standard ONNX operators."""
    c = f"{name}_c"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([0, 0, heads, head_size], np.int64), f"{c}_heads"),
        numpy_helper.from_array(np.array([0, 0, heads * head_size], np.int64), f"{c}_hidden"),
        numpy_helper.from_array(np.array(1.0 / np.sqrt(head_size), np.float32), f"{c}_scale"),
        numpy_helper.from_array(np.array(1.0, np.float32), f"{c}_one"),
        numpy_helper.from_array(np.array(-10000.0, np.float32), f"{c}_neg"),
        numpy_helper.from_array(np.array([1, 2], np.int64), f"{c}_axes"),
    ])
    make = helper.make_node
    nodes = []
    if bias:  # fp32 Attention's bias: split it along with the product
        parts = [f"{c}_bq", f"{c}_bk", f"{c}_bv"]
        nodes.append(make("Split", [bias], parts, axis=0, num_outputs=3))
        for i, t in enumerate((q, k, v)):
            nodes.append(make("Add", [t, parts[i]], [f"{t}_b"]))
        q, k, v = f"{q}_b", f"{k}_b", f"{v}_b"
    nodes += [
        make("Cast", [mask], [f"{c}_maskf"], to=TensorProto.FLOAT),
        make("Sub", [f"{c}_one", f"{c}_maskf"], [f"{c}_pad"]),
        make("Mul", [f"{c}_pad", f"{c}_neg"], [f"{c}_penalty2d"]),
        make("Unsqueeze", [f"{c}_penalty2d", f"{c}_axes"], [f"{c}_penalty"]),
        make("Mul", [q, f"{c}_scale"], [f"{c}_qs"]),
        make("Reshape", [f"{c}_qs", f"{c}_heads"], [f"{c}_qh"]),
        make("Transpose", [f"{c}_qh"], [f"{c}_qt"], perm=[0, 2, 1, 3]),
        make("Reshape", [k, f"{c}_heads"], [f"{c}_kh"]),
        make("Transpose", [f"{c}_kh"], [f"{c}_kt"], perm=[0, 2, 3, 1]),
        make("Reshape", [v, f"{c}_heads"], [f"{c}_vh"]),
        make("Transpose", [f"{c}_vh"], [f"{c}_vt"], perm=[0, 2, 1, 3]),
        make("MatMul", [f"{c}_qt", f"{c}_kt"], [f"{c}_scores"]),
        make("Add", [f"{c}_scores", f"{c}_penalty"], [f"{c}_masked"]),
        make("Softmax", [f"{c}_masked"], [f"{c}_probs"], axis=-1),
        make("MatMul", [f"{c}_probs", f"{c}_vt"], [f"{c}_context"]),
        make("Transpose", [f"{c}_context"], [f"{c}_ct"], perm=[0, 2, 1, 3]),
        make("Reshape", [f"{c}_ct", f"{c}_hidden"], [output]),
    ]
    return nodes


def feeds(batch: int, seq: int, padded: bool, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids; ``padded`` gives the rows lengths between ``seq / 2`` and ``seq``."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    if padded:
        for row, length in enumerate(rng.integers(seq // 2, seq + 1, batch)):
            mask[row, length:] = 0
    ids = rng.integers(1, vocab, (batch, seq)).astype(np.int64) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((batch, seq), np.int64)}


def compare_forms(
    path: Path, shapes: tuple[tuple[int, int], ...] = SHAPES, rounds: int = 5, threads: int = 2
) -> list[dict[str, Any]]:
    """Time every form of ``path`` on each shape (unpadded, and padded for the masked forms),
    the forms taking turns call by call; one row per shape, padding and form."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    vocab = vocab_size(onnx.load(str(path), load_external_data=False))
    with tempfile.TemporaryDirectory() as tmp:
        files = save_forms(path, Path(tmp))
        sessions = {
            form: ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
            for form, file in zip(FORMS, files, strict=True)
        }
    rows = []
    for batch, seq in shapes:
        for padded in (False, True):
            batch_feeds = feeds(batch, seq, padded, vocab)
            forms = [f for f in FORMS if not (padded and f in _MASK_FREE)]
            real = batch_feeds["attention_mask"].astype(bool)
            reference = sessions["fused"].run(None, batch_feeds)[0]
            errors = {f: float(np.abs(sessions[f].run(None, batch_feeds)[0] - reference)[real].max()) for f in forms}
            calls = rounds if batch * seq >= 4096 else rounds * 8
            times: dict[str, list[float]] = {f: [] for f in forms}
            for _ in range(calls):
                for form in forms:
                    started = time.perf_counter()
                    sessions[form].run(None, batch_feeds)
                    times[form].append((time.perf_counter() - started) * 1e3)
            fused = statistics.median(times["fused"])
            for form in forms:
                ms = statistics.median(times[form])
                rows.append({
                    "shape": f"{batch}x{seq}", "padded": padded, "form": form, "calls": calls,
                    "p50_ms": round(ms, 3), "fused_time_ratio": round(ms / fused, 3),
                    "max_abs_diff": errors[form],
                })
                print(f"{batch}x{seq} {'padded' if padded else 'full':6} {form:12} {ms:9.2f} ms "
                      f"({ms / fused:.2f}x fused)  max diff {errors[form]:.1e}", flush=True)
    return rows


def save_forms(model: Path, folder: Path) -> list[Path]:
    """Write ``model`` in every form to ``folder`` (``FORM.onnx``) beside a copy of its config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    config = model.parent / "config.json"
    if config.is_file():
        shutil.copy(config, folder / "config.json")
    loaded = onnx.load(str(model))
    paths = []
    for form in FORMS:
        onnx.save(rewrite_attention(loaded, form), str(folder / f"{form}.onnx"))
        paths.append(folder / f"{form}.onnx")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertrt.bench.attention_forms", description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="a fused fp32 or int8 file of a bundle (model.onnx, model.int8.onnx)")
    parser.add_argument("--rounds", type=int, default=5, help="calls per form on the large shapes (8x on small ones)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--out", type=Path, help="results JSON")
    parser.add_argument(
        "--save", type=Path, help="also write each form's file here, with the model's config.json (for op_profile)"
    )
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model} does not exist; pass a model file of an exported bundle.")
    if args.save:
        save_forms(args.model, args.save)
    rows = compare_forms(args.model, rounds=args.rounds, threads=args.threads)
    if args.out:
        result = {"model": str(args.model), "command": sys.argv, "machine": machine_info(), "rows": rows}
        write_json(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
