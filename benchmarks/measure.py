"""The measurement steps: W1 latency, W2 and W3 throughput, and model-level forwards, each
run for every system back to back before the next step starts.

Running step-major (all systems on one figure, then the next figure) rather than
system-major keeps each figure's systems within seconds of each other, so a change in
background load on a shared machine hits them alike instead of biasing whichever
system happened to run last.

Figures are recorded under dotted keys (``w1.classify.short``, ``w2.embed``, ``w3.qa``,
``scaling.batch.8x128``, ``peak_batch.32x256``), one entry per system. The answers a
system gave, and the sentence vectors of W2's embeddings, are kept beside the figures (not
in the results file) for agreement and fidelity checks.

Example::

    recorder = Recorder()
    for step in plan_steps(config, models, inputs):
        for system in systems:
            if system.supports(step.operation):
                step.run(Measurer(config, recorder), system)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from bertrt.bench import workloads
from bertrt.bench.config import BenchConfig
from bertrt.bench.machine import cpu_ticks, steal_share
from bertrt.bench.subjects import ModelInfo
from bertrt.bench.systems import System
from bertrt.bench.timing import LatencyStats, measure_throughput, time_calls

from bertrt.types import Task

Log = Callable[[str], None]


@dataclass
class Inputs:
    """The shared inputs of a run; a workload whose data is missing holds None."""

    w1: dict[str, str]
    stream: list[str] | None
    squad: workloads.SquadPairs | None


@dataclass
class Recorder:
    """Figures by key and system, the outputs behind them (for agreement) and the vectors
    behind embedding figures (for fidelity)."""

    figures: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    outputs: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    vectors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def add(self, key: str, system: str, figure: dict[str, Any], outputs: Sequence[Any] | None = None) -> None:
        """Record ``figure`` for ``system`` under ``key`` (and what it answered, if given)."""
        self.figures.setdefault(key, {})[system] = figure
        if outputs is not None:
            self.outputs.setdefault(key, {})[system] = list(outputs)


class Measurer:
    """Times one system on one step and records the figure.

    A latency step is run once per round (``round`` says which, see
    :attr:`BenchConfig.latency_rounds`); each round's calls join those of the rounds before,
    and the figure recorded is over all of them, with each round's median beside it.
    """

    def __init__(self, config: BenchConfig, recorder: Recorder) -> None:
        self.config = config
        self.recorder = recorder
        self.round = 0
        self._samples: dict[tuple[str, str], list[list[float]]] = {}
        self._steal: dict[tuple[str, str], list[float | None]] = {}

    def single_request(self, system: System, operation: str, case: str, text: str) -> None:
        """W1: one text per call, end to end, per-call latency."""
        serve = _serving(system, operation)
        last: list[Any] = [None]
        key = f"w1.{operation}.{case}"
        figure = self.latency(key, system.name, lambda: last.__setitem__(0, serve([text])))
        self.recorder.add(key, system.name, figure, last[0] if operation == "classify" else None)

    def stream(self, system: System, operation: str, stream: list[str]) -> None:
        """W2: the whole mixed stream in one call; the system batches it."""
        serve = _serving(system, operation)
        last: list[Any] = [None]
        warm = stream[: self.config.batch_size]
        figure = self.throughput(lambda: last.__setitem__(0, serve(stream)), len(stream), lambda: serve(warm))
        key = f"w2.{operation}"
        self.recorder.add(key, system.name, figure, last[0] if operation == "classify" else None)
        if operation == "embed":
            self.recorder.vectors.setdefault(key, {})[system.name] = np.asarray(last[0], dtype=np.float32)

    def stream_as_requests(self, system: System, stream: list[str]) -> None:
        """W2 classification with the stream arriving as requests of one batch each, where
        length grouping can only act inside a request. Baselines batch in arrival order
        anyway, so for them this is the ``w2.classify`` computation and its figure is reused."""
        key = "w2.classify.requests"
        if not system.name.startswith("bertrt-"):
            figure = self.recorder.figures.get("w2.classify", {}).get(system.name)
            if figure is not None:
                self.recorder.add(key, system.name, {**figure, "reused_from": "w2.classify"})
            return
        size = self.config.batch_size
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        figure = self.throughput(
            lambda: [system.classify(c) for c in chunks], len(stream), lambda: system.classify(chunks[0])
        )
        self.recorder.add(key, system.name, figure)

    def squad(self, system: System, squad: workloads.SquadPairs) -> None:
        """W3: SQuAD questions with their full contexts, answers end to end."""
        last: list[list[str]] = [[]]
        figure = self.throughput(
            lambda: last.__setitem__(0, system.answer(squad.questions, squad.contexts)),
            len(squad.questions),
            lambda: system.answer(squad.questions[:2], squad.contexts[:2]),
        )
        normalize = workloads.squad_normalize
        exact = sum(normalize(a) in {normalize(g) for g in gold} for a, gold in zip(last[0], squad.answers))
        self.recorder.add("w3.qa", system.name, {**figure, "exact_match": exact / len(last[0])}, last[0])

    def forward(self, system: System, prefix: str, model: ModelInfo, batch: int, seq: int) -> None:
        """One model-level forward latency on synthetic ``batch`` x ``seq`` token ids."""
        feeds = workloads.token_batch(batch, seq, model.vocab_size, self.config.seed)
        key = f"{prefix}.{batch}x{seq}"
        figure = self.latency(key, system.name, lambda: system.forward(model.task, feeds), min(2, self.config.warmup))
        self.recorder.add(key, system.name, {**figure, "batch": batch, "seq": seq})

    def latency(self, key: str, system: str, fn: Callable[[], object], warmup: int | None = None) -> dict[str, Any]:
        """This round's calls of ``fn`` (the config's warm-up, and its repetition limits
        shared out over the rounds) joined to the earlier rounds'; the figure over all of
        them, with ``rounds_p50_ms``, each round's median, and ``rounds_steal``, the share
        of the machine's CPU time stolen by the hypervisor during each round's calls."""
        config = self.config
        rounds = config.latency_rounds
        ticks = cpu_ticks()
        samples = time_calls(
            fn,
            warmup=config.warmup if warmup is None else warmup,
            repeats=-(-config.repeats // rounds),
            min_repeats=-(-config.min_repeats // rounds),
            max_seconds=config.max_seconds / rounds,
        )
        steal = steal_share(ticks, cpu_ticks())
        if self.round == 0:
            self._samples[key, system] = []
            self._steal[key, system] = []
        per_round = self._samples[key, system]
        per_round.append(samples)
        self._steal[key, system].append(steal)
        stats = LatencyStats.from_seconds([seconds for batch in per_round for seconds in batch])
        return {
            **stats.to_dict(),
            "rounds_p50_ms": [float(np.median(batch)) * 1e3 for batch in per_round],
            "rounds_steal": list(self._steal[key, system]),
        }

    def throughput(self, fn: Callable[[], object], items: int, warmup: Callable[[], object]) -> dict[str, Any]:
        """Items per second of ``fn`` over the config's passes, after ``warmup()``."""
        return measure_throughput(fn, items, passes=self.config.stream_passes, warmup=warmup).to_dict()


@dataclass(frozen=True)
class Step:
    """One figure to measure on every system that supports ``operation``."""

    label: str
    operation: str
    run: Callable[[Measurer, System], None]
    # Latency steps run once per round (BenchConfig.latency_rounds), the others once.
    latency: bool = False


def plan_steps(config: BenchConfig, models: Mapping[Task, ModelInfo], inputs: Inputs) -> list[Step]:
    """The run's steps in order: W1, W2, W3, then the scaling curves and W2's biggest batch."""
    steps: list[Step] = []
    operations = [op for op, task in (("classify", Task.CLASSIFY), ("embed", Task.EMBED)) if task in models]
    if config.wants("w1"):
        for operation in operations:
            for case, text in inputs.w1.items():
                run = partial(Measurer.single_request, operation=operation, case=case, text=text)
                steps.append(Step(f"W1 {operation} {case}", operation, run, latency=True))
    if inputs.stream is not None:
        stream = inputs.stream
        for operation in operations:
            run = partial(Measurer.stream, operation=operation, stream=stream)
            steps.append(Step(f"W2 {operation}, {len(stream)} texts", operation, run))
        if "classify" in operations:
            run = partial(Measurer.stream_as_requests, stream=stream)
            steps.append(Step("W2 classify as requests of one batch", "classify", run))
    if inputs.squad is not None:
        run = partial(Measurer.squad, squad=inputs.squad)
        steps.append(Step(f"W3 {len(inputs.squad.questions)} SQuAD questions", "answer", run))
    if config.wants("scaling") and Task.CLASSIFY in models:
        model = models[Task.CLASSIFY]
        shapes = [("scaling.batch", b, config.scaling_seq) for b in config.batch_sizes]
        shapes += [("scaling.sequence", 1, s) for s in config.seq_lengths]
        # W2's biggest batch: the shape the physical-limit comparison uses.
        shapes.append(("peak_batch", config.batch_size, min(config.stream_max_tokens, model.max_length)))
        for prefix, batch, seq in shapes:
            run = partial(Measurer.forward, prefix=prefix, model=model, batch=batch, seq=seq)
            steps.append(Step(f"forward {batch} x {seq}", "forward", run, latency=True))
    return steps


def _serving(system: System, operation: str) -> Callable[[list[str]], Any]:
    return {"classify": system.classify, "embed": system.embed}[operation]
