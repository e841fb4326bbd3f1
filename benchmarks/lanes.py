"""Batch lanes against the same batches run in turn: W2 and W3 calls, both ways, one process.

A call of many batches either runs them in turn, each on every intra-op thread
(``batch_lanes=1``), or side by side on one-thread lanes (``batch_lanes=0``, the default:
see :mod:`bertrt.lanes`). This times both on the same bundle, precision and threads:

* ``embed`` and ``classify``: W2's mixed review stream (capped at 256 tokens) in one call;
* ``qa``: W3's SQuAD questions with their full contexts in one call.

The two runners take turns call by call for ``--rounds`` rounds (one untimed call each
first). Reported per figure: each runner's seconds per round, the ratio of best times and
the median of the per-round ratios (above 1: lanes are faster), and whether the two
returned the same results: lanes run smaller batches (``batch_size / lanes``), so sentence
vectors may differ in float rounding (within 1e-5), labels and answer spans not at all.

    python -m bertrt.bench.lanes --models models/minilm --out benchmarks/results/lanes-minilm.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bertrt.bench import workloads
from bertrt.bench.config import DEFAULT_SQUAD
from bertrt.bench.machine import machine_info
from bertrt.bench.report import write_json

import bertrt

# W2 is specified at 256 tokens (bertrt bench caps the stream the same way).
STREAM_TOKENS = 256
OPERATIONS = ("embed", "classify", "qa")
MODES = {"in-turn": 1, "lanes": 0}


# Lanes cut a call into smaller batches (see bertrt.lanes), so vectors may differ from the
# in-turn run's by float rounding; labels, spans and answers must not differ at all.
VECTOR_TOLERANCE = 1e-5


def _call(bundle: bertrt.Bundle, operation: str, data: Any) -> Callable[[], Any]:
    """One W2 or W3 call of ``operation`` on ``data``; returns what :func:`compare` reads."""
    if operation == "embed":
        return lambda: np.stack([r.vector for r in bundle.embedder(data, token_embeddings=False)])
    if operation == "classify":
        return lambda: [r.label for r in bundle.classifier(data)]
    questions, contexts = data
    return lambda: [(r.best.text, r.best.start, r.best.end) if r.best else None for r in bundle.qa(questions, contexts)]


def compare(in_turn: Any, lanes: Any) -> dict[str, Any]:
    """Whether the two runs gave the same results: equal labels and answer spans, vectors
    within :data:`VECTOR_TOLERANCE` (their largest difference is reported)."""
    if isinstance(in_turn, np.ndarray):
        diff = float(np.abs(in_turn - lanes).max())
        return {"same_results": diff <= VECTOR_TOLERANCE, "max_abs_diff": diff}
    return {"same_results": in_turn == lanes}


def time_modes(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, Any]:
    """Alternate the calls round by round; seconds per round, ratios, and result equality."""
    results = {mode: call() for mode, call in calls.items()}  # untimed: loads lanes, warms arenas
    seconds: dict[str, list[float]] = {mode: [] for mode in calls}
    for _ in range(rounds):
        for mode, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[mode].append(time.perf_counter() - start)
    per_round = [a / b for a, b in zip(seconds["in-turn"], seconds["lanes"], strict=True)]
    return {
        "seconds": {mode: [round(s, 4) for s in values] for mode, values in seconds.items()},
        "best_ratio": min(seconds["in-turn"]) / min(seconds["lanes"]),
        "median_round_ratio": statistics.median(per_round),
        **compare(results["in-turn"], results["lanes"]),
    }


def measure(
    models: Path, precisions: Sequence[str], operations: Sequence[str], texts: int, questions: int, threads: int,
    rounds: int, squad: Path,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per operation and precision."""
    tokenizer = workloads.load_tokenizer(models / "embedder")
    data: dict[str, Any] = {}
    if {"embed", "classify"} & set(operations):
        stream = workloads.cap_tokens(tokenizer, workloads.mixed_stream(texts, seed=0), STREAM_TOKENS)
        data["embed"] = data["classify"] = stream
    if "qa" in operations:
        pairs = workloads.squad_pairs(squad, questions, seed=0)
        data["qa"] = (pairs.questions, pairs.contexts)
    rows = []
    for precision in precisions:
        bundles = {
            mode: bertrt.load(
                models,
                device="cpu",
                precision=precision,
                options=bertrt.RuntimeOptions(intra_op_threads=threads, inter_op_threads=1, batch_lanes=lanes),
            )
            for mode, lanes in MODES.items()
        }
        for operation in operations:
            calls = {mode: _call(bundle, operation, data[operation]) for mode, bundle in bundles.items()}
            row = {"operation": operation, "precision": precision, **time_modes(calls, rounds)}
            print(
                f"{operation:8} {precision}: in turn {min(row['seconds']['in-turn']):.2f} s, "
                f"lanes {min(row['seconds']['lanes']):.2f} s, best ratio {row['best_ratio']:.3f}, "
                f"median round ratio {row['median_round_ratio']:.3f}, same results {row['same_results']}",
                flush=True,
            )
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertrt.bench.lanes", description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models/minilm"), help="bundle folder")
    parser.add_argument("--precision", action="append", help="fp32 or int8; repeat for both (default: both)")
    parser.add_argument("--operation", action="append", choices=OPERATIONS, help="default: all three")
    parser.add_argument("--texts", type=int, default=500, help="W2 stream size")
    parser.add_argument("--questions", type=int, default=500, help="W3 questions")
    parser.add_argument("--squad", type=Path, default=None, help="SQuAD v1.1 JSON (default: the shared heldout8)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, and so lanes")
    parser.add_argument("--rounds", type=int, default=4, help="timed calls per runner")
    parser.add_argument("--out", type=Path, help="results JSON")
    args = parser.parse_args(argv)
    if not (args.models / "manifest.json").is_file():
        parser.error(f"{args.models} is not a bundle (no manifest.json); pass --models with an exported bundle.")
    if min(args.texts, args.questions, args.threads, args.rounds) < 1:
        parser.error("--texts, --questions, --threads and --rounds must be positive.")
    rows = measure(
        args.models, args.precision or ["fp32", "int8"], args.operation or list(OPERATIONS), args.texts,
        args.questions, args.threads, args.rounds, args.squad or DEFAULT_SQUAD,
    )  # fmt: skip
    if args.out:
        result = {"command": sys.argv, "machine": machine_info(), "threads": args.threads, "rows": rows}
        write_json(result, args.out)
    return 0 if all(row["same_results"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
