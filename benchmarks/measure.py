"""Timing one system through the workloads: W1 latency, W2 and W3 throughput, scaling curves.

Figures are recorded under dotted keys (``w1.classify.short``, ``w2.embed``, ``w3.qa``,
``scaling.batch.8x128``, ``peak_batch.32x256``), one entry per system, so every figure
can later be set against every baseline measured in the same run. The answers a system
gave are kept beside the figures (not in the results file) for the agreement checks.

Example::

    recorder = Recorder()
    SystemMeasurement(system, config, recorder, log=print).run(models, inputs)
    recorder.figures["w1.classify.short"]["bertrt-fp32"]["p50_ms"]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks import workloads
from benchmarks.config import BenchConfig
from benchmarks.subjects import ModelInfo
from benchmarks.systems import System
from benchmarks.timing import LatencyStats, measure_latency, measure_throughput
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
    """Figures by key and system, and the outputs behind them (for agreement)."""

    figures: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    outputs: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def add(self, key: str, system: str, figure: dict[str, Any], outputs: Sequence[Any] | None = None) -> None:
        """Record ``figure`` for ``system`` under ``key`` (and what it answered, if given)."""
        self.figures.setdefault(key, {})[system] = figure
        if outputs is not None:
            self.outputs.setdefault(key, {})[system] = list(outputs)


class SystemMeasurement:
    """Runs every requested workload that one system supports."""

    def __init__(self, system: System, config: BenchConfig, recorder: Recorder, log: Log) -> None:
        self.system = system
        self.config = config
        self.recorder = recorder
        self.log = log

    def run(self, models: Mapping[Task, ModelInfo], inputs: Inputs) -> None:
        """All workloads of the config that the system and the bundle allow."""
        serving = {"classify": (Task.CLASSIFY, self.system.classify), "embed": (Task.EMBED, self.system.embed)}
        for operation, (task, serve) in serving.items():
            if task not in models or not self.system.supports(operation):
                continue
            if self.config.wants("w1"):
                self.single_requests(operation, serve, inputs.w1)
            if inputs.stream is not None:
                self.stream(operation, serve, inputs.stream)
        if inputs.squad is not None and self.system.supports("answer"):
            self.squad(inputs.squad)
        if self.config.wants("scaling") and self.system.supports("forward") and Task.CLASSIFY in models:
            self.scaling(models[Task.CLASSIFY])

    def single_requests(self, operation: str, serve: Callable[[list[str]], Any], texts: Mapping[str, str]) -> None:
        """W1: one text per call, end to end, per-call latency."""
        for case, text in texts.items():
            self.log(f"{self.system.name}: W1 {operation} {case}")
            last: list[Any] = [None]
            stats = self._latency(lambda: last.__setitem__(0, serve([text])))
            self.recorder.add(f"w1.{operation}.{case}", self.system.name, stats.to_dict(),
                              last[0] if operation == "classify" else None)

    def stream(self, operation: str, serve: Callable[[list[str]], Any], stream: list[str]) -> None:
        """W2: the whole mixed stream in one call (the system batches it), then, for
        classification, the same stream arriving as requests of one batch each."""
        name, size = self.system.name, self.config.batch_size
        self.log(f"{name}: W2 {operation}, {len(stream)} texts in batches of {size}")
        last: list[Any] = [None]
        figure = self._throughput(lambda: last.__setitem__(0, serve(stream)), len(stream), lambda: serve(stream[:size]))
        self.recorder.add(f"w2.{operation}", name, figure, last[0] if operation == "classify" else None)
        if operation != "classify":
            return
        # As requests of one batch, length grouping can only act inside a request. Baselines
        # batch in arrival order anyway, so their figure is the same computation: reused.
        if name.startswith("bertrt-"):
            chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
            figure = self._throughput(lambda: [serve(c) for c in chunks], len(stream), lambda: serve(chunks[0]))
        else:
            figure = {**figure, "reused_from": "w2.classify"}
        self.recorder.add("w2.classify.requests", name, figure)

    def squad(self, squad: workloads.SquadPairs) -> None:
        """W3: SQuAD questions with their full contexts, answers end to end."""
        self.log(f"{self.system.name}: W3 {len(squad.questions)} SQuAD questions")
        last: list[list[str]] = [[]]
        figure = self._throughput(
            lambda: last.__setitem__(0, self.system.answer(squad.questions, squad.contexts)),
            len(squad.questions),
            lambda: self.system.answer(squad.questions[:2], squad.contexts[:2]),
        )
        normalize = workloads.squad_normalize
        exact = sum(normalize(a) in {normalize(g) for g in gold} for a, gold in zip(last[0], squad.answers))
        self.recorder.add("w3.qa", self.system.name, {**figure, "exact_match": exact / len(last[0])}, last[0])

    def scaling(self, model: ModelInfo) -> None:
        """Model-level forward latency against batch size and sequence length, and at W2's
        biggest batch (``batch_size`` x ``max_length``), on synthetic token ids."""
        config = self.config
        curves = {
            "scaling.batch": [(b, config.scaling_seq) for b in config.batch_sizes],
            "scaling.sequence": [(1, s) for s in config.seq_lengths],
            "peak_batch": [(config.batch_size, model.max_length)],
        }
        for prefix, shapes in curves.items():
            for batch, seq in shapes:
                self.log(f"{self.system.name}: forward {batch} x {seq}")
                feeds = workloads.token_batch(batch, seq, model.vocab_size, config.seed)
                stats = self._latency(lambda: self.system.forward(Task.CLASSIFY, feeds), warmup=min(2, config.warmup))
                self.recorder.add(f"{prefix}.{batch}x{seq}", self.system.name, {**stats.to_dict(), "batch": batch, "seq": seq})

    def _latency(self, fn: Callable[[], object], warmup: int | None = None) -> LatencyStats:
        config = self.config
        return measure_latency(
            fn, warmup=config.warmup if warmup is None else warmup, repeats=config.repeats,
            min_repeats=config.min_repeats, max_seconds=config.max_seconds,
        )

    def _throughput(self, fn: Callable[[], object], items: int, warmup: Callable[[], object]) -> dict[str, Any]:
        return measure_throughput(fn, items, passes=self.config.stream_passes, warmup=warmup).to_dict()
