"""Whether cutting a large CPU forward into row chunks makes it faster, and by how much.

bertrt runs a CPU forward of more than ``RuntimeOptions.cpu_chunk_tokens`` tokens as
consecutive slices of rows (see :mod:`bertrt.session`). This module times that against the
whole batch on **one** bertrt session per file, changing only the session's chunk budget
between calls, so the comparison carries no difference between two sessions (two identical
ONNX Runtime sessions land a few percent apart: `python -m bertrt.bench.session_options`).
Per round, shape and budget (the order reversed every other round) two untimed calls, then
timed calls for ``--seconds``; the round's median is kept, with the page faults per call
of the turn, its two untimed calls included (where the arena policy maps a turn's working
set when the budget before it left a different one). The figure is the whole batch's time /
the budget's time (above 1: cutting helps), the median over rounds and the rounds it came
out ahead, and the largest difference between the cut run's outputs and the whole run's
(0.0: the same bits).

``--streams`` times `bertrt bench`'s W2 and W3 work instead, end to end through
:func:`bertrt.load`: the mixed stream (``--stream-texts``, capped at 256 tokens as W2 is)
classified and embedded, and SQuAD questions (``--qa-questions``) answered, with every
session of each runner (the lanes' one included) switched between whole batches and the
default budget, in turns, the best of ``--rounds`` passes counting. It reports texts or
questions per second, the ratio, and whether labels, answers and vectors came out the same.

    python -m bertrt.bench.chunking --models models/minilm --rounds 8 \\
        --out benchmarks/results/chunking-minilm.json
    python -m bertrt.bench.chunking --models models/minilm --streams --rounds 3 \\
        --out benchmarks/results/chunking-streams-minilm.json
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bertrt.bench import report, workloads
from bertrt.bench.config import DEFAULT_SQUAD
from bertrt.bench.machine import load_average, machine_info
from bertrt.bench.subjects import bundle_models
from bertrt.bench.timing import time_calls

import bertrt
from bertrt.errors import BertrtError
from bertrt.options import CPU_CHUNK_TOKENS, RuntimeOptions
from bertrt.session import OrtSession
from bertrt.types import Device, Pooling, Precision, Task

SHAPES = ((8, 128), (16, 128), (32, 128), (64, 128), (32, 256), (8, 512))
BUDGETS = (512, CPU_CHUNK_TOKENS, 2048)
WHOLE = 0  # the budget that never cuts
WARMUP_CALLS = 2
MAX_CALLS = 50  # per budget, shape and round
STREAM_MAX_TOKENS = 256  # W2's cap (bertrt.bench.config.BenchConfig.stream_max_tokens)


def measure(
    models: Path,
    precisions: list[Precision],
    budgets: list[int],
    shapes: list[tuple[int, int]],
    threads: int,
    rounds: int,
    seconds: float,
) -> dict[str, Any]:
    """Per precision and shape, every budget's round medians and its ratio to the whole
    batch; a JSON-ready record."""
    classifier = bundle_models(models)[Task.CLASSIFY]
    # A model with a shorter window (the test bundles') runs each shape cut to its window.
    shapes = list(dict.fromkeys((batch, min(seq, classifier.max_length)) for batch, seq in shapes))
    variants = [WHOLE, *budgets]
    figures: dict[str, Any] = {}
    load_before = load_average()
    for precision in precisions:
        path = classifier.onnx_file(precision)
        session = OrtSession(path, Device.CPU, RuntimeOptions(intra_op_threads=threads, inter_op_threads=1))
        medians: dict[str, dict[int, list[float]]] = {_key(s): {v: [] for v in variants} for s in shapes}
        faults: dict[str, dict[int, list[float]]] = {_key(s): {v: [] for v in variants} for s in shapes}
        differences = {_key(s): {v: 0.0 for v in variants} for s in shapes}
        rows: dict[str, dict[int, int]] = {_key(s): {} for s in shapes}
        for round_index in range(rounds):
            order = variants if round_index % 2 == 0 else variants[::-1]
            for batch, seq in shapes:
                feeds = workloads.token_batch(batch, seq, classifier.vocab_size, seed=round_index)
                session.chunk_tokens = WHOLE
                whole = session.run(feeds)
                for budget in order:
                    session.chunk_tokens = budget
                    rows[_key((batch, seq))][budget] = session.chunk_rows(feeds) or batch
                    median_ms, faulted = _turn(session, feeds, seconds)
                    medians[_key((batch, seq))][budget].append(median_ms)
                    faults[_key((batch, seq))][budget].append(faulted)
                    cut = session.run(feeds)
                    differences[_key((batch, seq))][budget] = max(
                        differences[_key((batch, seq))][budget],
                        *(float(np.abs(cut[name] - whole[name]).max()) for name in whole),
                    )
        figures[precision.value] = {
            shape: _ratios(per_budget, faults[shape], differences[shape], rows[shape])
            for shape, per_budget in medians.items()
        }
    return _record(models, threads, rounds, load_before, figures=figures)


def measure_streams(
    models: Path,
    precisions: list[Precision],
    threads: int,
    rounds: int,
    n_texts: int,
    n_questions: int,
    squad_path: Path = DEFAULT_SQUAD,
) -> dict[str, Any]:
    """W2 classify and embed and W3 through bertrt with whole batches and with row chunks,
    taking turns on the same sessions; a JSON-ready record."""
    infos = bundle_models(models)
    text_model = infos[Task.CLASSIFY]
    stream = workloads.cap_tokens(
        workloads.load_tokenizer(text_model.directory),
        workloads.mixed_stream(n_texts, seed=0),
        min(STREAM_MAX_TOKENS, text_model.max_length),
    )
    qa = infos[Task.QA]
    fits = workloads.question_fits(workloads.load_tokenizer(qa.directory), qa.max_length, qa.doc_stride or 0)
    squad = workloads.squad_pairs(squad_path, n_questions, 0, fits)
    figures: dict[str, Any] = {}
    load_before = load_average()
    for precision in precisions:
        options = RuntimeOptions(intra_op_threads=threads, inter_op_threads=1)
        bundle = bertrt.load(models, device="cpu", precision=precision, options=options)
        works = _stream_works(bundle, stream, squad)
        runners = [bundle.classifier, bundle.embedder, bundle.qa]
        for _, work in works.values():
            work()  # opens the lanes' sessions, so the switch below reaches them
        seconds: dict[str, dict[int, list[float]]] = {name: {WHOLE: [], CPU_CHUNK_TOKENS: []} for name in works}
        outputs: dict[str, dict[int, Any]] = {name: {} for name in works}
        for round_index in range(rounds):
            order = [WHOLE, CPU_CHUNK_TOKENS] if round_index % 2 == 0 else [CPU_CHUNK_TOKENS, WHOLE]
            for name, (_, work) in works.items():
                for budget in order:
                    for runner in runners:
                        for session in runner.sessions:
                            session.chunk_tokens = budget
                    started = time.perf_counter()
                    outputs[name][budget] = work()
                    seconds[name][budget].append(time.perf_counter() - started)
        figures[precision.value] = {
            name: _stream_figure(items, seconds[name], outputs[name]) for name, (items, _) in works.items()
        }
    return _record(models, threads, rounds, load_before, streams=figures)


def _record(
    models: Path, threads: int, rounds: int, load_before: tuple[float, float, float] | None, **parts: Any
) -> dict[str, Any]:
    """The JSON-ready record of a run: the machine and settings, then ``parts``."""
    return {
        "machine": machine_info(),
        "models": str(models),
        "threads": threads,
        "rounds": rounds,
        "load_average": {"before": load_before, "after": load_average()},
        **parts,
    }


def _stream_works(
    bundle: bertrt.Bundle, stream: list[str], squad: workloads.SquadPairs
) -> dict[str, tuple[int, Callable[[], Any]]]:
    """W2 classify, W2 embed and W3 as calls on ``bundle``, each with its item count."""
    return {
        "w2.classify": (len(stream), lambda: [r.label for r in bundle.classifier(stream)]),
        "w2.embed": (len(stream), lambda: np.stack([r.vector for r in bundle.embedder(stream, pooling=Pooling.MEAN)])),
        "w3.qa": (
            len(squad.questions),
            lambda: [r.best.text if r.best else "" for r in bundle.qa(squad.questions, squad.contexts)],
        ),
    }


def _stream_figure(items: int, seconds: dict[int, list[float]], outputs: dict[int, Any]) -> dict[str, Any]:
    whole, cut = outputs[WHOLE], outputs[CPU_CHUNK_TOKENS]
    if isinstance(whole, np.ndarray):
        same: Any = float(np.abs(whole - cut).max())
    else:
        same = whole == cut
    best = {budget: items / min(times) for budget, times in seconds.items()}
    return {
        "items": items,
        "whole_per_s": round(best[WHOLE], 2),
        "cut_per_s": round(best[CPU_CHUNK_TOKENS], 2),
        "cut_vs_whole": round(best[CPU_CHUNK_TOKENS] / best[WHOLE], 3),
        "rounds_cut_vs_whole": [
            round(w / c, 3) for w, c in zip(seconds[WHOLE], seconds[CPU_CHUNK_TOKENS], strict=True)
        ],
        "same_outputs" if not isinstance(same, float) else "max_abs_difference": same,
    }


def _turn(session: OrtSession, feeds: dict[str, np.ndarray], seconds: float) -> tuple[float, float]:
    """Milliseconds (the median of one turn's timed calls) and page faults per call of the
    turn, its untimed calls included."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = time_calls(
        lambda: session.run(feeds), warmup=WARMUP_CALLS, repeats=MAX_CALLS, min_repeats=3, max_seconds=seconds
    )
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    return statistics.median(times) * 1e3, (after - before) / (len(times) + WARMUP_CALLS)


def _ratios(
    per_budget: dict[int, list[float]],
    faults: dict[int, list[float]],
    differences: dict[int, float],
    rows: dict[int, int],
) -> dict[str, Any]:
    whole = per_budget[WHOLE]
    figure: dict[str, Any] = {}
    for budget, rounds_ms in per_budget.items():
        name = "whole" if budget == WHOLE else str(budget)
        figure[name] = {
            "rows_per_chunk": rows[budget],
            "p50_ms": round(statistics.median(rounds_ms), 3),
            "rounds_ms": [round(m, 3) for m in rounds_ms],
            "faults_per_call": round(statistics.median(faults[budget]), 1),
        }
        if budget != WHOLE:
            ratios = [w / m for w, m in zip(whole, rounds_ms, strict=True)]
            figure[name]["vs_whole"] = round(statistics.median(ratios), 3)
            figure[name]["rounds_ahead"] = sum(r > 1 for r in ratios)
            figure[name]["max_abs_difference"] = differences[budget]
    return figure


def _key(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def main(argv: list[str] | None = None) -> int:
    """Command line: python -m bertrt.bench.chunking --help."""
    parser = argparse.ArgumentParser(prog="python -m bertrt.bench.chunking", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models/minilm"), help="bundle folder")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--rounds", type=int, default=6, help="turns of every budget per shape")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per turn (at least 3 calls)")
    parser.add_argument(
        "--precision",
        action="append",
        choices=[Precision.FP32.value, Precision.INT8.value],
        help="the classifier file to time (repeatable; default: fp32 and int8)",
    )
    parser.add_argument(
        "--budget",
        action="append",
        type=int,
        help=f"tokens per chunk to time against the whole batch (repeatable; default: {', '.join(map(str, BUDGETS))})",
    )
    parser.add_argument(
        "--shape",
        action="append",
        type=workloads.shape_argument,
        help="BATCHxSEQUENCE (repeatable; default: six shapes)",
    )
    parser.add_argument("--streams", action="store_true", help="time W2 and W3 end to end instead of forwards")
    parser.add_argument("--stream-texts", type=int, default=500, help="W2 texts with --streams")
    parser.add_argument("--qa-questions", type=int, default=150, help="W3 questions with --streams")
    parser.add_argument("--squad", type=Path, default=DEFAULT_SQUAD, help="SQuAD v1.1 file for W3 with --streams")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    budgets = list(dict.fromkeys(args.budget or BUDGETS))
    if min(args.threads, args.rounds, args.stream_texts, args.qa_questions, *budgets) < 1 or args.seconds <= 0:
        parser.error(
            "--threads, --rounds, --stream-texts, --qa-questions and every --budget must be 1 or more, "
            "and --seconds above 0."
        )
    precisions = [Precision(p) for p in dict.fromkeys(args.precision or ("fp32", "int8"))]
    try:
        if args.streams:
            record = measure_streams(
                args.models, precisions, args.threads, args.rounds, args.stream_texts, args.qa_questions, args.squad
            )
        else:
            record = measure(
                args.models, precisions, budgets, args.shape or list(SHAPES), args.threads, args.rounds, args.seconds
            )
    except BertrtError as exc:  # a missing or broken bundle or variant: its one sentence, no traceback
        parser.error(str(exc))
    record["command"] = sys.argv
    for precision, streams in record.get("streams", {}).items():
        for name, stream in streams.items():
            print(
                f"{precision} {name:<12} whole {stream['whole_per_s']:.1f}/s  cut {stream['cut_per_s']:.1f}/s  "
                f"cut / whole {stream['cut_vs_whole']:.3f}  rounds {stream['rounds_cut_vs_whole']}"
            )
    for precision, shapes in record.get("figures", {}).items():
        for shape, figure in shapes.items():
            cells = (
                f"{name}: {stats['vs_whole']:.3f} (ahead {stats['rounds_ahead']}/{args.rounds}, "
                f"{stats['rows_per_chunk']} rows, diff {stats['max_abs_difference']:.1e})"
                for name, stats in figure.items()
                if name != "whole"
            )
            print(f"{precision} {shape:>7}  whole {figure['whole']['p50_ms']:.1f} ms  whole / cut: " + "  ".join(cells))
    if args.out:
        report.write_json(record, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
