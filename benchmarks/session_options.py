"""Whether one ONNX Runtime session option makes a plain session faster on the same file.

A runtime can only beat a plain ``session.run`` loop on the same graph and threads through
what it sets around the run; the session's own options are the first place to look. This
module opens the fp32 classifier once per variant (the same intra-op threads, one inter-op
thread) and times forwards of every shape on each, in rounds: per round and shape, every
variant in turn (the order rotated each round) gets two untimed calls, then timed calls
for ``--seconds``; the round's median is kept. The figure is ``base`` time / the variant's
time (above 1: the option helps), the median over rounds and the rounds it came out ahead.

Variants: ``base`` (what a user writes: threads only), ``same`` and ``same-again`` (a second
and a third session with ``base``'s options, opened in the order asked for: how far identical
sessions land apart), ``dynamic-block-base`` (the thread pool's dynamic block size,
``session.dynamic_block_base=4``), ``denormal-as-zero`` (``session.set_denormal_as_zero=1``),
``affinity`` (the worker thread pinned to the second logical CPU), ``no-spinning``
(``session.intra_op.allow_spinning=0``), ``one-thread`` (``intra_op_num_threads=1``, for scale)
and ``huge-pages`` and ``huge-pages-again`` (no session option: the memory the session's
build mapped moved onto 2 MiB pages afterwards, an experiment the runtime did not adopt;
:mod:`bertrt.bench.huge_pages`). Identical sessions land a few percent apart, so an effect that
small needs two sessions on each side.

    python -m bertrt.bench.session_options --models models/minilm --rounds 6 \\
        --out benchmarks/results/session-options-minilm.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from bertrt.bench import report, workloads
from bertrt.bench.huge_pages import back_with_huge_pages, new_memory
from bertrt.bench.machine import load_average, machine_info
from bertrt.bench.subjects import ModelInfo, bundle_models
from bertrt.bench.timing import time_calls

from bertrt.errors import BertrtError
from bertrt.types import Precision, Task

SHAPES = ((1, 16), (1, 128), (8, 128), (64, 128), (32, 256))
WARMUP_CALLS = 2
MAX_CALLS = 200  # per variant, shape and round
# Session config entries per variant (``threads`` overrides the intra-op thread count).
VARIANTS: dict[str, dict[str, str]] = {
    "base": {},
    "same": {},
    "same-again": {},
    "dynamic-block-base": {"session.dynamic_block_base": "4"},
    "denormal-as-zero": {"session.set_denormal_as_zero": "1"},
    "affinity": {"session.intra_op_thread_affinities": "2"},
    "no-spinning": {"session.intra_op.allow_spinning": "0"},
    "one-thread": {"threads": "1"},
    "huge-pages": {"huge_pages": "1"},
    "huge-pages-again": {"huge_pages": "1"},
}
# Variant entries that are not session config entries.
_NOT_CONFIG = ("threads", "huge_pages")


def open_session(
    model: Path, threads: int, entries: dict[str, str], notes: dict[str, str] | None = None
) -> ort.InferenceSession:
    """A CPU session of ``model`` with ``threads`` intra-op threads and the config ``entries``
    (``huge_pages``: its weights moved onto 2 MiB pages once built; what moved and how long
    the move took go into ``notes``)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(entries.get("threads", threads))
    options.inter_op_num_threads = 1
    for key, value in entries.items():
        if key not in _NOT_CONFIG:
            options.add_session_config_entry(key, value)
    if not entries.get("huge_pages"):
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    # Only a session whose memory moves needs the maps read around its build.
    with new_memory() as built:
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    backed = back_with_huge_pages(built.ranges())
    seconds = time.perf_counter() - started
    if notes is not None:
        notes["huge_pages"] = f"{backed.describe()}, moved in {seconds:.2f} s"
    return session


def measure(
    classifier: ModelInfo, variants: list[str], threads: int, rounds: int, seconds: float
) -> dict[str, Any]:
    """Each variant's round medians per shape and its ratio to ``base``; a JSON-ready record."""
    model = classifier.onnx_file(Precision.FP32)
    notes: dict[str, dict[str, str]] = {name: {} for name in ["base", *variants]}
    sessions = {name: open_session(model, threads, VARIANTS[name], notes[name]) for name in notes}
    declared = {i.name for i in sessions["base"].get_inputs()}
    # A model with a shorter window (the test bundles') runs each shape cut to its window.
    shapes = list(dict.fromkeys((batch, min(seq, classifier.max_length)) for batch, seq in SHAPES))
    medians: dict[str, dict[str, list[float]]] = {_key(s): {name: [] for name in sessions} for s in shapes}
    load_before = load_average()
    for round_index in range(rounds):
        turn = round_index % len(sessions)
        order = list(sessions)[turn:] + list(sessions)[:turn]
        for batch, seq in shapes:
            feeds = workloads.token_batch(batch, seq, classifier.vocab_size, seed=round_index)
            feeds = {k: v for k, v in feeds.items() if k in declared}
            for name in order:
                medians[_key((batch, seq))][name].append(_round_median(sessions[name], feeds, seconds))
    return {
        "machine": machine_info(),
        "model": str(model),
        "threads": threads,
        "rounds": rounds,
        "load_average": {"before": load_before, "after": load_average()},
        "sessions": {name: note for name, note in notes.items() if note},
        "figures": {shape: _ratios(per_variant) for shape, per_variant in medians.items()},
    }


def _round_median(session: ort.InferenceSession, feeds: dict[str, np.ndarray], seconds: float) -> float:
    """Milliseconds: the median of one turn's timed calls, after the untimed ones."""
    times = time_calls(
        lambda: session.run(None, feeds), warmup=WARMUP_CALLS, repeats=MAX_CALLS, min_repeats=3, max_seconds=seconds
    )
    return statistics.median(times) * 1e3


def _ratios(per_variant: dict[str, list[float]]) -> dict[str, Any]:
    base = per_variant["base"]
    figure: dict[str, Any] = {}
    for name, rounds_ms in per_variant.items():
        figure[name] = {"p50_ms": round(statistics.median(rounds_ms), 3), "rounds_ms": [round(m, 3) for m in rounds_ms]}
        if name != "base":
            ratios = [b / m for b, m in zip(base, rounds_ms, strict=True)]
            figure[name]["vs_base"] = round(statistics.median(ratios), 3)
            figure[name]["rounds_ahead"] = sum(r > 1 for r in ratios)
    return figure


def _key(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m bertrt.bench.session_options --help."""
    parser = argparse.ArgumentParser(
        prog="python -m bertrt.bench.session_options", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--models", type=Path, default=Path("models/minilm"), help="bundle folder")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every variant")
    parser.add_argument("--rounds", type=int, default=6, help="turns of every variant per shape")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per turn (at least 3 calls)")
    parser.add_argument(
        "--variant",
        action="append",
        choices=[name for name in VARIANTS if name != "base"],
        help="a variant to time against base (repeatable; default: all)",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.threads, args.rounds) < 1 or args.seconds <= 0:
        parser.error("--threads and --rounds must be 1 or more, and --seconds above 0.")
    variants = list(dict.fromkeys(args.variant or [name for name in VARIANTS if name != "base"]))
    try:
        classifier = bundle_models(args.models)[Task.CLASSIFY]
    except BertrtError as exc:  # a missing or broken bundle: its one sentence, no traceback
        parser.error(str(exc))
    record = measure(classifier, variants, args.threads, args.rounds, args.seconds)
    record["command"] = sys.argv
    for name, note in record["sessions"].items():
        print(f"{name}: {'; '.join(note.values())}")
    for shape, figure in record["figures"].items():
        cells = (
            f"{name} {stats['vs_base']:.3f} (ahead {stats['rounds_ahead']}/{args.rounds})"
            for name, stats in figure.items()
            if name != "base"
        )
        print(f"{shape:>7}  base {figure['base']['p50_ms']:.2f} ms  base / variant: " + "  ".join(cells))
    if args.out:
        report.write_json(record, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
