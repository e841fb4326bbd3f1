"""W2 embed against sentence-transformers' ONNX backends, the systems taking turns call by call.

``bertrt bench`` times each system's W2 stream in one block after the systems before it, so
on a shared machine a slow stretch can land on one system and not the other. Here every
round makes one timed call of the whole stream per system, in a rotating order, and each
ratio is taken round by round (its median over rounds is reported beside the ratio of
median times):

* ``bertrt-int8`` against ``st-int8`` (sentence-transformers' dynamic int8 export);
* ``bertrt-fp32`` against ``st-onnx`` (sentence-transformers' ONNX backend);
* each bertrt precision with batch lanes (the default) against the same batches run in turn
  (``batch_lanes=1``: the ``-in-turn`` systems), which shows what lanes bring.

The systems are ``bertrt bench``'s own (:mod:`bertrt.bench.systems`), with its threads,
batch size and W2 stream (capped at 256 tokens).

    python -m bertrt.bench.peer_rounds --models models/minilm --texts 500 --rounds 6 \\
        --out benchmarks/results/peer-rounds-minilm.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bertrt.bench import workloads
from bertrt.bench.machine import machine_info
from bertrt.bench.report import write_json
from bertrt.bench.subjects import bundle_models
from bertrt.bench.systems import BertrtSystem, System, SystemSettings, make_system

from bertrt.types import Precision, Task

STREAM_TOKENS = 256
PEERS = ("st-onnx", "st-int8")
# (system, baseline): the ratios reported, baseline time over system time (above 1: faster).
PAIRS = (
    ("bertrt-int8", "st-int8"),
    ("bertrt-fp32", "st-onnx"),
    ("bertrt-int8", "bertrt-int8-in-turn"),
    ("bertrt-fp32", "bertrt-fp32-in-turn"),
)


def run_rounds(systems: list[System], stream: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds per round for each system; every system embeds the stream once untimed first."""
    for system in systems:
        system.embed(stream)
    seconds: dict[str, list[float]] = {system.name: [] for system in systems}
    for number in range(rounds):
        shift = number % len(systems)
        for system in systems[shift:] + systems[:shift]:  # rotate who goes first
            start = time.perf_counter()
            system.embed(stream)
            seconds[system.name].append(time.perf_counter() - start)
        print(f"round {number + 1}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()), flush=True)
    return seconds


def ratios(seconds: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Each pair's ratio of median times and median of per-round ratios (baseline / system)."""
    rows = []
    for system, baseline in PAIRS:
        if system not in seconds or baseline not in seconds:
            continue
        per_round = [b / s for s, b in zip(seconds[system], seconds[baseline], strict=True)]
        rows.append({
            "system": system,
            "baseline": baseline,
            "median_ratio": statistics.median(seconds[baseline]) / statistics.median(seconds[system]),
            "median_round_ratio": statistics.median(per_round),
            "round_ratios": [round(r, 4) for r in per_round],
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertrt.bench.peer_rounds", description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models/minilm"), help="bundle folder")
    parser.add_argument("--texts", type=int, default=500, help="W2 stream size")
    parser.add_argument("--rounds", type=int, default=6, help="timed calls per system")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every system")
    parser.add_argument("--no-peers", action="store_true", help="bertrt only (no sentence-transformers)")
    parser.add_argument("--out", type=Path, help="results JSON")
    args = parser.parse_args(argv)
    if not (args.models / "manifest.json").is_file():
        parser.error(f"{args.models} is not a bundle (no manifest.json); pass --models with an exported bundle.")
    if min(args.texts, args.rounds, args.threads) < 1:
        parser.error("--texts, --rounds and --threads must be positive.")
    models = bundle_models(args.models)
    settings = SystemSettings(threads=args.threads)
    names = [] if args.no_peers else list(PEERS)
    systems = [make_system(name, models, settings) for name in [*names, "bertrt-fp32", "bertrt-int8"]]
    systems += [BertrtSystem(models, settings, p, batch_lanes=1) for p in (Precision.FP32, Precision.INT8)]
    tokenizer = workloads.load_tokenizer(models[Task.EMBED].directory)
    stream = workloads.cap_tokens(tokenizer, workloads.mixed_stream(args.texts, seed=0), STREAM_TOKENS)
    seconds = run_rounds(systems, stream, args.rounds)
    rows = ratios(seconds)
    for row in rows:
        print(
            f"{row['system']} vs {row['baseline']}: {row['median_ratio']:.3f} (median times), "
            f"{row['median_round_ratio']:.3f} (median of rounds)"
        )
    if args.out:
        result = {
            "command": sys.argv, "machine": machine_info(), "texts": args.texts, "threads": args.threads,
            "seconds": {name: [round(s, 4) for s in values] for name, values in seconds.items()}, "ratios": rows,
        }  # fmt: skip
        write_json(result, args.out)
    for system in systems:
        system.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
