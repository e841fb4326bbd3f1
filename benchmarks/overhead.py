"""Where bertrt's time goes next to a plain ``session.run`` loop on the same file, part by part.

The runtime used to hand ONNX Runtime's CPU arena back after every run and to bind every
input and output on the CPU; it now keeps the arena by policy
(:class:`bertrt.memory.ArenaPolicy`) and runs plain ``session.run`` on the CPU. Both older
behaviours are still options, so one process can time every combination on the same file,
with the same threads, calls alternating system by system:

* ``ort``: plain ONNX Runtime as ``bertrt bench`` runs it (:class:`bertrt.bench.systems.PlainOrtSystem`);
* ``ort-twin``: a second, identical plain ONNX Runtime system with sessions of its own: what
  separates it from ``ort`` is not overhead but how far two identical systems drift apart on
  this machine, the yardstick for every other ratio;
* ``ort-shared``: the same plain loop on ``after``'s own sessions (no run options): the two
  share every byte of model memory, so what separates them is only the code bertrt runs
  around ``session.run``, with none of the drift between sessions;
* ``before``: ``cpu_arena="shrink", io_binding=True`` (the defaults before the change);
* ``arena``: ``cpu_arena="adaptive", io_binding=True`` (the arena policy alone);
* ``plain-run``: ``cpu_arena="shrink", io_binding=False`` (plain run alone);
* ``after``: the defaults (both).

Figures: W1 requests end to end (classify and embed, 11 and 128 tokens) and model-level
forwards of the classifier (token ids in, logits out), each as the median wall time per call
with the ratio to ``ort`` (above 1: faster than plain ONNX Runtime) and to ``ort-shared``
(``vs_shared``: bertrt's own cost, overall and round by round), the ratio to ``ort`` taken
round by round (the median over rounds of ``ort``'s median in that round over the system's,
so a slow stretch that spans a round cancels out) and the page faults per call (a count, so
it does not drift with the machine's load: every fault is memory handed back and mapped
again). Systems take turns as in ``bertrt bench``: in each round every
system makes one untimed call, then ``--per-turn`` timed calls back to back. Then the Python
around the model (tokenizing, feeds, results) with the model replaced by its stored
outputs, in microseconds per W1 request.

``--pairs N`` (alone, or with ``--paired-only`` to skip the rest) measures that Python in the
state a real request finds it, right after a model run: ``after`` and ``ort-shared`` alternate
call by call on the same session, N pairs per W1 figure (a quarter of that for 128 tokens),
and the median of the per-pair differences is bertrt's extra time per request. The
model-level forwards are paired the same way (bertrt's ``OrtSession.run`` against
``session.run`` on the session underneath, N x 11 / tokens-per-call pairs, at least 3): on
one session the drift between sessions is gone, so what remains is bertrt's own cost. Stored
outputs leave the caches warm, and they are not after a run that streamed the model's
weights through them, so this is larger than the stored-output figure.

    python -m bertrt.bench.overhead --models models/minilm --out benchmarks/results/overhead-minilm.json
    python -m bertrt.bench.overhead --models models/minilm --pairs 2000 --paired-only \
        --out benchmarks/results/overhead-paired-minilm.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from bertrt.bench import workloads
from bertrt.bench.machine import load_average, machine_info
from bertrt.bench.subjects import ModelInfo, bundle_models
from bertrt.bench.systems import PlainOrtSystem, SystemSettings

import bertrt
from bertrt.types import Pooling, Task

CONFIGS: dict[str, dict[str, Any]] = {
    "before": {"cpu_arena": "shrink", "io_binding": True},
    "arena": {"cpu_arena": "adaptive", "io_binding": True},
    "plain-run": {"cpu_arena": "shrink", "io_binding": False},
    "after": {},
}
FORWARDS = ((1, 11), (1, 128), (8, 128), (1, 512), (32, 256))
# Paired forwards get pairs in proportion to an 11-token call's, and at least this many.
SHORT_TOKENS = 11
FORWARD_PAIRS_MIN = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertrt.bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models/minilm"), help="bundle folder")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every system")
    parser.add_argument("--rounds", type=int, default=5, help="turns of every system per figure")
    parser.add_argument("--per-turn", type=int, default=10, help="timed calls per turn (W1; fewer for large forwards)")
    parser.add_argument("--forward-seconds", type=float, default=30.0, help="time budget per model-level figure")
    parser.add_argument("--pairs", type=int, default=0, help="call pairs per W1 figure on one session (0: none)")
    parser.add_argument("--paired-only", action="store_true", help="measure only the pairs (needs --pairs)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.pairs < 0 or (args.paired_only and args.pairs == 0):
        parser.error("--pairs must be 0 or more, and above 0 with --paired-only.")
    if args.paired_only:
        results = measure_pairs(args.models, args.threads, args.pairs)
        print(render_pairs(results["paired"]))
    else:
        results = measure(args.models, args.threads, args.rounds, args.per_turn, args.forward_seconds, args.pairs)
        print(render(results))
        if args.pairs:
            print(render_pairs(results["paired"]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def measure(
    models: Path, threads: int, rounds: int, per_turn: int, forward_seconds: float, pairs: int = 0
) -> dict[str, Any]:
    """Every figure for every system, the Python-side costs and, with ``pairs``, the paired
    figures of :func:`paired_costs` on ``after``."""
    infos = bundle_models(models)
    ort_system = PlainOrtSystem(infos, SystemSettings(threads=threads))
    twin = PlainOrtSystem(infos, SystemSettings(threads=threads))
    bundles = {name: _load(models, threads, **changes) for name, changes in CONFIGS.items()}
    shared = _plain_loop_on(bundles["after"], infos, threads)
    load_before = load_average()
    texts = workloads.w1_texts(workloads.load_tokenizer(infos[Task.CLASSIFY].directory), 128)
    figures: dict[str, dict[str, Any]] = {}
    for label, text in (("short", texts["short"]), ("long", texts["long"])):
        calls: dict[str, Callable[[], object]] = {"ort": partial(ort_system.classify, [text])}
        calls["ort-twin"] = partial(twin.classify, [text])
        calls["ort-shared"] = partial(shared.classify, [text])
        calls |= {name: partial(b.classifier, [text]) for name, b in bundles.items()}
        figures[f"w1.classify.{label}"] = in_turns(calls, rounds, per_turn)
        calls = {
            "ort": partial(ort_system.embed, [text]),
            "ort-twin": partial(twin.embed, [text]),
            "ort-shared": partial(shared.embed, [text]),
        }
        calls |= {name: partial(_embed, b, text) for name, b in bundles.items()}
        figures[f"w1.embed.{label}"] = in_turns(calls, rounds, per_turn)
    vocab = infos[Task.CLASSIFY].vocab_size
    for batch, seq in _forward_shapes(infos):
        feeds = workloads.token_batch(batch, seq, vocab, seed=0)
        calls = {
            "ort": partial(ort_system.forward, Task.CLASSIFY, feeds),
            "ort-twin": partial(twin.forward, Task.CLASSIFY, feeds),
            "ort-shared": partial(shared.forward, Task.CLASSIFY, feeds),
        }
        calls |= {name: partial(b.classifier.session.run, feeds) for name, b in bundles.items()}
        once = _seconds(calls["ort"])
        timed = int(forward_seconds / max(once * len(calls) * rounds, 1e-6))
        figures[f"forward.{batch}x{seq}"] = in_turns(calls, rounds, max(2, min(per_turn, timed)))
    results = _run_record(threads, load_before, figures=figures)
    results["python_us"] = python_costs(bundles["after"], ort_system, texts, 2000)
    if pairs:
        results["paired"] = paired_costs(bundles["after"], shared, texts, pairs, infos)
    return results


def _forward_shapes(infos: Mapping[Task, ModelInfo]) -> list[tuple[int, int]]:
    """FORWARDS for the classifier; a model with a shorter window (the test bundles') runs
    each shape cut to its window."""
    longest = infos[Task.CLASSIFY].max_length
    return list(dict.fromkeys((batch, min(seq, longest)) for batch, seq in FORWARDS))


def measure_pairs(models: Path, threads: int, pairs: int) -> dict[str, Any]:
    """Only the paired figures of :func:`paired_costs`, on a bundle with the default options."""
    infos = bundle_models(models)
    bundle = _load(models, threads)
    shared = _plain_loop_on(bundle, infos, threads)
    texts = workloads.w1_texts(workloads.load_tokenizer(infos[Task.CLASSIFY].directory), 128)
    load_before = load_average()
    return _run_record(threads, load_before, paired=paired_costs(bundle, shared, texts, pairs, infos))


def paired_costs(
    bundle: bertrt.Bundle,
    shared: PlainOrtSystem,
    texts: Mapping[str, str],
    pairs: int,
    infos: Mapping[Task, ModelInfo],
) -> dict[str, dict[str, float]]:
    """bertrt's extra time per W1 request next to ``shared``, a plain loop on ``bundle``'s
    own sessions, the two alternating call by call (see the module notes); then the same for
    each model-level forward of FORWARDS on the classifier (``infos`` gives its window and
    vocabulary), with fewer pairs the more tokens a call carries."""
    paired: dict[str, dict[str, float]] = {}
    for label, text in texts.items():
        count = pairs if label == "short" else max(1, pairs // 4)
        classify = in_pairs(partial(bundle.classifier, [text]), partial(shared.classify, [text]), count)
        paired[f"w1.classify.{label}"] = classify
        paired[f"w1.embed.{label}"] = in_pairs(partial(_embed, bundle, text), partial(shared.embed, [text]), count)
    session = bundle.classifier.session
    for batch, seq in _forward_shapes(infos):
        feeds = workloads.token_batch(batch, seq, infos[Task.CLASSIFY].vocab_size, seed=0)
        count = max(FORWARD_PAIRS_MIN, pairs * SHORT_TOKENS // (batch * seq))
        paired[f"forward.{batch}x{seq}"] = in_pairs(
            partial(session.run, feeds), partial(shared.forward, Task.CLASSIFY, feeds), count
        )
    return paired


def _load(models: Path, threads: int, **changes: Any) -> bertrt.Bundle:
    options = bertrt.RuntimeOptions(intra_op_threads=threads, inter_op_threads=1, **changes)
    return bertrt.load(models, device="cpu", options=options)


def _plain_loop_on(bundle: bertrt.Bundle, infos: Mapping[Task, ModelInfo], threads: int) -> PlainOrtSystem:
    """The plain ONNX Runtime loop running ``bundle``'s own classifier and embedder sessions."""
    sessions = {task: bundle.runner(task).session.inference_session for task in (Task.CLASSIFY, Task.EMBED)}
    return PlainOrtSystem(infos, SystemSettings(threads=threads), sessions=sessions)


def _run_record(threads: int, load_before: Any, **figures: Any) -> dict[str, Any]:
    """What every results file of this module holds besides its figures."""
    return {
        "machine": machine_info(),
        "command": sys.argv,
        "threads": threads,
        "load_average": {"before": load_before, "after": load_average()},
        **figures,
    }


def in_pairs(bertrt_call: Callable[[], object], plain_call: Callable[[], object], pairs: int) -> dict[str, float]:
    """``pairs`` pairs of calls, who goes first alternating; the medians of each side and of
    the per-pair differences (bertrt minus plain)."""
    for _ in range(3):
        bertrt_call()
        plain_call()
    ours: list[float] = []
    theirs: list[float] = []
    for index in range(pairs):
        if index % 2:
            theirs.append(_seconds(plain_call))
            ours.append(_seconds(bertrt_call))
        else:
            ours.append(_seconds(bertrt_call))
            theirs.append(_seconds(plain_call))
    return {
        "pairs": pairs,
        "bertrt_ms": round(statistics.median(ours) * 1e3, 3),
        "plain_ms": round(statistics.median(theirs) * 1e3, 3),
        "extra_us": round(statistics.median(o - t for o, t in zip(ours, theirs, strict=True)) * 1e6, 1),
        "vs_plain": round(statistics.median(theirs) / statistics.median(ours), 3),
    }


def in_turns(calls: Mapping[str, Callable[[], object]], rounds: int, per_turn: int) -> dict[str, Any]:
    """In each of ``rounds``, every system makes one untimed call and ``per_turn`` timed ones;
    per system the median wall ms, the ratio of ``ort``'s median to it (overall, and the median
    of the per-round ratios) and the minor page faults per timed call."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    faults: dict[str, list[int]] = {name: [] for name in calls}
    by_round: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            call()
            turn = []
            for _ in range(per_turn):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                turn.append(_seconds(call))
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            seconds[name] += turn
            by_round[name].append(statistics.median(turn))

    def ratios(base: str, name: str) -> tuple[float, float]:
        overall = statistics.median(seconds[base]) / statistics.median(seconds[name])
        per_round = statistics.median(b / s for b, s in zip(by_round[base], by_round[name], strict=True))
        return round(overall, 3), round(per_round, 3)

    figure: dict[str, Any] = {}
    for name, values in seconds.items():
        figure[name] = {
            "p50_ms": round(statistics.median(values) * 1e3, 3),
            "faults_per_call": statistics.median(faults[name]),
            "calls": len(values),
        }
        figure[name]["vs_ort"], figure[name]["vs_ort_by_round"] = ratios("ort", name)
        if "ort-shared" in seconds:
            figure[name]["vs_shared"], figure[name]["vs_shared_by_round"] = ratios("ort-shared", name)
    return figure


def python_costs(
    bundle: bertrt.Bundle, ort_system: PlainOrtSystem, texts: Mapping[str, str], repeats: int
) -> dict[str, dict[str, float]]:
    """Microseconds per W1 request spent outside the model: each session's run is replaced by
    one that returns the outputs it gave for that request."""
    costs: dict[str, dict[str, float]] = {}
    for label, text in texts.items():
        runner = bundle.classifier
        stored = runner.session.run(runner.tokenizer.pad(runner.tokenizer.encode([text])).feeds())
        session, tokenizer = ort_system._load(Task.CLASSIFY)
        plain = session.run(None, _ort_feeds(tokenizer, text))
        ort_system._loaded[Task.CLASSIFY] = (_Stored(plain), tokenizer)  # type: ignore[assignment]
        real_run = runner.session.run
        runner.session.run = _Stored(stored).outputs_of  # type: ignore[method-assign,assignment]
        try:
            costs[f"w1.classify.{label}"] = {
                "ort": _best_us(partial(ort_system.classify, [text]), repeats),
                "bertrt": _best_us(partial(runner, [text]), repeats),
            }
        finally:
            runner.session.run = real_run  # type: ignore[method-assign]
            ort_system._loaded[Task.CLASSIFY] = (session, tokenizer)
    return costs


class _Stored:
    """Stands in for a session: answers every run with stored outputs."""

    def __init__(self, outputs: Any) -> None:
        self.outputs = outputs
        self._inputs = [_Named(name) for name in ("input_ids", "attention_mask", "token_type_ids")]

    def run(self, names: object, feeds: object) -> Any:
        return self.outputs

    def outputs_of(self, feeds: object, outputs: object = None) -> Any:
        return self.outputs

    def get_inputs(self) -> list[_Named]:
        return self._inputs


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


def _ort_feeds(tokenizer: Any, text: str) -> dict[str, np.ndarray]:
    [encoding] = tokenizer.encode_batch([text])
    return {
        "input_ids": np.array([encoding.ids], dtype=np.int64),
        "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
        "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
    }


def _embed(bundle: bertrt.Bundle, text: str) -> object:
    return bundle.embedder([text], pooling=Pooling.MEAN, token_embeddings=False)


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _best_us(call: Callable[[], object], repeats: int) -> float:
    """The median of five medians of ``repeats // 5`` calls, in microseconds."""
    chunk = max(1, repeats // 5)
    medians = [statistics.median(_seconds(call) for _ in range(chunk)) for _ in range(5)]
    return round(statistics.median(medians) * 1e6, 1)


def render(results: Mapping[str, Any]) -> str:
    """The figures as a table: median ms per call (x plain ONNX Runtime), page faults per call."""
    systems = ["ort", "ort-twin", "ort-shared", *CONFIGS]
    lines = ["| figure | " + " | ".join(systems) + " |", "|---" * (len(systems) + 1) + "|"]
    for figure, by_system in results["figures"].items():
        cells = [
            f"{s['p50_ms']:.2f} ms ({s['vs_ort']:.2f}x; by round {s['vs_ort_by_round']:.2f}x; "
            f"vs shared {s['vs_shared']:.2f}x / {s['vs_shared_by_round']:.2f}x; {s['faults_per_call']:.0f} faults)"
            for s in (by_system[name] for name in systems)
        ]
        lines.append(f"| {figure} | " + " | ".join(cells) + " |")
    load = results["load_average"]
    lines += ["", f"Load average (1, 5, 15 min) before: {load['before']}, after: {load['after']}"]
    lines += ["", "Python around the model (µs per request, the model's outputs stored):"]
    for figure, costs in results["python_us"].items():
        lines.append(f"  {figure}: plain ONNX Runtime {costs['ort']:.0f} µs, bertrt {costs['bertrt']:.0f} µs")
    return "\n".join(lines)


def render_pairs(paired: Mapping[str, Mapping[str, float]]) -> str:
    """The paired figures, one line each."""
    lines = ["bertrt against a plain loop on the same session, calls alternating:"]
    for figure, p in paired.items():
        lines.append(
            f"  {figure}: bertrt {p['bertrt_ms']:.2f} ms, plain {p['plain_ms']:.2f} ms ({p['vs_plain']:.3f}x), "
            f"bertrt's extra per request {p['extra_us']:+.0f} µs over {p['pairs']:.0f} pairs"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
