"""What a call costs right after a call on another session of the same file.

Two plain ONNX Runtime sessions of one fp32 file (same threads). Per shape, the median time of
a call on session ``a``:

* ``alone``: ``a`` called back to back;
* ``after-other``: each call on ``a`` right after one on ``b``;
* ``after-other-and-pause``: the same with a 20 ms pause between them, which lets ``b``'s
  intra-op worker stop spinning, so what remains is not thread contention.

Each mode runs ``--calls`` calls, and the modes take turns ``--rounds`` times. A harness that
interleaves systems call by call (``bertrt.bench.overhead``, ``bertrt.bench.peer_rounds``)
times every system right after another one's call, so this is the cost those systems all pay.

    python -m bertrt.bench.session_alternation --models models/minilm \\
        --out benchmarks/results/session-alternation-minilm.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from bertrt.bench import workloads
from bertrt.bench.machine import load_average, machine_info
from bertrt.bench.report import write_json
from bertrt.bench.subjects import ModelInfo, bundle_models

from bertrt.types import Precision, Task

SHAPES = ((1, 11), (1, 128))
PAUSE_S = 0.02


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bertrt.bench.session_alternation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--models", type=Path, default=Path("models/minilm"), help="bundle folder")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both sessions")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per mode and round")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every mode")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.threads, args.calls, args.rounds) < 1:
        parser.error("--threads, --calls and --rounds must be 1 or more.")
    results = measure(bundle_models(args.models)[Task.CLASSIFY], args.threads, args.calls, args.rounds)
    results["command"] = sys.argv
    for shape, modes in results["figures"].items():
        cells = (f"{mode} {row['p50_ms']:.2f} ms ({row['vs_alone']:.2f}x)" for mode, row in modes.items())
        print(shape, "  ".join(cells))
    if args.out:
        write_json(results, args.out)
    return 0


def measure(classifier: ModelInfo, threads: int, calls: int, rounds: int) -> dict[str, Any]:
    """Median ms per call on session ``a`` in each mode (the classifier's fp32 file), and its
    ratio to ``alone``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model = str(classifier.onnx_file(Precision.FP32))
    a, b = (ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]) for _ in range(2))
    declared = {i.name for i in a.get_inputs()}
    load_before = load_average()
    figures = {}
    # A model with a shorter window (the test bundles') runs each shape cut to its window.
    for batch, seq in dict.fromkeys((batch, min(seq, classifier.max_length)) for batch, seq in SHAPES):
        feeds = workloads.token_batch(batch, seq, classifier.vocab_size, seed=0)
        figures[f"{batch}x{seq}"] = _time_modes(a, b, {k: v for k, v in feeds.items() if k in declared}, calls, rounds)
    return {
        "machine": machine_info(),
        "model": model,
        "threads": threads,
        "load_average": {"before": load_before, "after": load_average()},
        "figures": figures,
    }


def _time_modes(
    a: ort.InferenceSession, b: ort.InferenceSession, feeds: dict[str, np.ndarray], calls: int, rounds: int
) -> dict[str, dict[str, Any]]:
    def timed() -> float:
        start = time.perf_counter()
        a.run(None, feeds)
        return time.perf_counter() - start

    def after_other(pause: float) -> float:
        b.run(None, feeds)
        if pause:
            time.sleep(pause)
        return timed()

    modes: dict[str, Callable[[], float]] = {
        "alone": timed,
        "after-other": lambda: after_other(0.0),
        "after-other-and-pause": lambda: after_other(PAUSE_S),
    }
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode, call in modes.items():
            call()  # untimed: the first call after the previous mode
            seconds[mode] += [call() for _ in range(calls)]
    alone = statistics.median(seconds["alone"])
    return {
        mode: {
            "p50_ms": round(statistics.median(values) * 1e3, 3),
            "vs_alone": round(statistics.median(values) / alone, 3),
            "calls": len(values),
        }
        for mode, values in seconds.items()
    }


if __name__ == "__main__":
    sys.exit(main())
