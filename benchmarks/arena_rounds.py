"""Whether bertrt's arena policy costs the large model-level forwards anything.

`bertrt bench` times each forward in rounds: per system and round, two untimed calls and then
the timed ones. bertrt's sessions follow :class:`bertrt.memory.ArenaPolicy` (runs of over
1,024 tokens may hand the CPU arena back), plain ONNX Runtime keeps its arena. This module
repeats that pattern in one process for three systems on the same fp32 file and threads:
``ort`` (`bertrt bench`'s own plain ``session.run`` system), ``bertrt-adaptive`` (bertrt's
session with the default policy) and ``bertrt-keep`` (bertrt's session that never hands the
arena back). The systems take turns in every round, the order reversed every other round,
and each round keeps one timed call per system; the figure is ``ort`` time / the system's
time (above 1: faster than plain ONNX Runtime), overall (medians) and round by round, with
the page faults of each timed call (``rounds_faults``: a count, so unlike the times it does
not drift with the machine; every fault is arena memory mapped again).

    python -m bertrt.bench.arena_rounds --models models/minilm --rounds 8 \
        --out benchmarks/results/arena-rounds-minilm.json
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from bertrt.bench import report, workloads
from bertrt.bench.machine import machine_info
from bertrt.bench.subjects import bundle_models
from bertrt.bench.systems import PlainOrtSystem, SystemSettings

import bertrt
from bertrt.errors import BertrtError
from bertrt.types import Task

SHAPES = ((16, 128), (64, 128), (32, 256))
WARMUP_CALLS = 2  # as `bertrt bench` gives every forward in every round


def arena_rounds(
    models: Path, rounds: int, threads: int, shapes: tuple[tuple[int, int], ...] = SHAPES
) -> dict[str, Any]:
    """The three systems' forwards of ``shapes`` (batch, sequence) over ``rounds`` rounds; a
    JSON-ready record."""
    infos = bundle_models(models)
    plain = PlainOrtSystem(infos, SystemSettings(threads=threads))
    sessions = {}
    for mode in ("adaptive", "keep"):
        # Whole batches, as the runtime ran them before row chunks and as the figures of
        # benchmarks/README.md were measured: the arena policy is what is timed here.
        options = bertrt.RuntimeOptions(
            intra_op_threads=threads, inter_op_threads=1, cpu_arena=mode, cpu_chunk_tokens=0
        )
        sessions[mode] = bertrt.load(models, device="cpu", options=options).classifier.session
    calls: dict[str, Callable[[Mapping[str, np.ndarray]], object]] = {
        "ort": lambda feeds: plain.forward(Task.CLASSIFY, feeds),
        "bertrt-adaptive": lambda feeds: sessions["adaptive"].run(feeds),
        "bertrt-keep": lambda feeds: sessions["keep"].run(feeds),
    }
    vocab_size = infos[Task.CLASSIFY].vocab_size
    seconds: dict[str, dict[str, list[float]]] = {_key(s): {name: [] for name in calls} for s in shapes}
    faults: dict[str, dict[str, list[int]]] = {_key(s): {name: [] for name in calls} for s in shapes}
    for round_index in range(rounds):
        order = list(calls) if round_index % 2 == 0 else list(reversed(calls))
        for batch, seq in shapes:
            feeds = workloads.token_batch(batch, seq, vocab_size, seed=round_index)
            for name in order:
                for _ in range(WARMUP_CALLS):
                    calls[name](feeds)
                faulted = _minor_faults()
                started = time.perf_counter()
                calls[name](feeds)
                seconds[_key((batch, seq))][name].append(time.perf_counter() - started)
                faults[_key((batch, seq))][name].append(_minor_faults() - faulted)
    return {
        "machine": machine_info(),
        "threads": threads,
        "rounds": rounds,
        "figures": {shape: _ratios(per_system, faults[shape]) for shape, per_system in seconds.items()},
    }


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _key(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def _ratios(per_system: dict[str, list[float]], faults: dict[str, list[int]]) -> dict[str, Any]:
    """Each system's timings and its ratio to ``ort``, overall and per round, and the page
    faults of its timed calls."""
    baseline = np.asarray(per_system["ort"])
    figure: dict[str, Any] = {}
    for name, samples in per_system.items():
        times = np.asarray(samples)
        figure[name] = {
            "p50_ms": float(np.median(times)) * 1e3,
            "rounds_ms": (times * 1e3).round(1).tolist(),
            "rounds_faults": faults[name],
        }
        if name != "ort":
            figure[name]["vs_ort"] = float(np.median(baseline) / np.median(times))
            figure[name]["rounds_vs_ort"] = (baseline / times).round(3).tolist()
    return figure


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m bertrt.bench.arena_rounds --help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models/minilm"), help="bundle folder")
    parser.add_argument("--rounds", type=int, default=8, help="turns of every system per shape")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every system")
    parser.add_argument(
        "--shape",
        action="append",
        type=workloads.shape_argument,
        help="BATCHxSEQUENCE to time (repeatable; default: 16x128, 64x128, 32x256)",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be 1 or more.")
    try:
        record = arena_rounds(args.models, args.rounds, args.threads, tuple(args.shape or SHAPES))
    except BertrtError as exc:  # a missing or broken bundle: its one sentence, no traceback
        parser.error(str(exc))
    for shape, figure in record["figures"].items():
        for name, stats in figure.items():
            if name != "ort":
                rounds = ", ".join(f"{r:.2f}" for r in stats["rounds_vs_ort"])
                print(f"{shape:>7}  {name:<16} ort / {name}: {stats['vs_ort']:.3f}  rounds {rounds}")
                print(f"{'':>7}  {'':<16} page faults per timed call: {stats['rounds_faults']}")
    if args.out:
        report.write_json(record, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
