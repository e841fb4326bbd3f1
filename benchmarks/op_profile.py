"""Where a forward pass spends its time: ONNX Runtime's profiler, summed per operator type.

Used to explain a missed target with evidence: if MatMul kernels take most of the time
at a rate near the GEMM peak, the runtime is compute-bound; if element-wise and layout
operators do, graph fusion is what is missing.

Example (also a command)::

    python -m bertrt.bench.op_profile models/minilm/classifier/model.onnx --batch 32 --seq 256
    summary = profile_ops(Path(".../model.onnx"), batch=32, seq=256, threads=2)
    summary["by_op"]["MatMul"]["share"]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import onnxruntime as ort
from bertrt.bench.subjects import read_vocab_size
from bertrt.bench.workloads import token_batch


def profile_ops(model: Path, *, batch: int, seq: int, threads: int = 2, runs: int = 3) -> dict[str, Any]:
    """Profile ``runs`` forwards of ``model`` on a ``batch`` x ``seq`` input of random ids
    (after one untimed run); returns milliseconds per run by operator type, largest first,
    with each type's share of the kernel time and the number of nodes of that type."""
    vocab_size = read_vocab_size(Path(model).parent)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory(prefix="bertrt-profile-") as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        declared = {i.name for i in session.get_inputs()}
        feeds = {k: v for k, v in token_batch(batch, seq, vocab_size, seed=0).items() if k in declared}
        for _ in range(runs + 1):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    return summarize(events, runs + 1, skip_first=True)


def summarize(events: list[dict[str, Any]], total_runs: int, skip_first: bool = True) -> dict[str, Any]:
    """Per-operator-type kernel time from ONNX Runtime profile ``events``, averaged over the
    runs (the first, a warm-up, left out when ``skip_first``)."""
    run_starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first_end = run_starts[1] if skip_first and len(run_starts) > 1 else 0
    runs = total_runs - (1 if skip_first else 0)
    micros: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < first_end:
            continue
        op = event.get("args", {}).get("op_name", "?")
        micros[op] += event["dur"]
        nodes[op].add(event["name"])
    total = sum(micros.values()) or 1.0
    by_op = {
        op: {"ms_per_run": us / runs / 1e3, "share": us / total, "nodes": len(nodes[op])}
        for op, us in sorted(micros.items(), key=lambda item: -item[1])
    }
    return {"kernel_ms_per_run": total / runs / 1e3, "by_op": by_op}


def main() -> None:
    """Print the per-operator summary of one ONNX file as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(
        json.dumps(
            profile_ops(args.model, batch=args.batch, seq=args.seq, threads=args.threads, runs=args.runs), indent=2
        )
    )


if __name__ == "__main__":
    main()
