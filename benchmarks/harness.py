"""The benchmark run: every requested system through every requested workload, then the
physical limit and the footprint; one JSON-ready results dict.

All systems live in one process and are measured step by step (every system on one
figure, then the next figure; see :mod:`bertrt.bench.measure`), on inputs built once and
shared, with the same thread count and batch size. A system whose libraries or variant
files are missing is skipped with a note.

Example::

    results = run_benchmark(BenchConfig.preset("full", bundle=Path("models/minilm")))
    results["figures"]["w1.classify.short"]["bertrt-fp32"]["p50_ms"]
    results["ratios"]["w1.classify.short"]["bertrt-fp32"]["torch-pipeline"]   # speed-up
"""

from __future__ import annotations

import gc
import importlib.util
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from bertrt.bench import report, workloads
from bertrt.bench.config import BASELINES, BenchConfig
from bertrt.bench.footprint import measure_footprint
from bertrt.bench.machine import cpu_ticks, load_average, machine_info, steal_share
from bertrt.bench.measure import Inputs, Log, Measurer, Recorder, plan_steps
from bertrt.bench.physical import BertShape, gemm_rate
from bertrt.bench.subjects import ModelInfo, bundle_models
from bertrt.bench.systems import System, SystemSettings, make_system

from bertrt.errors import BertrtError
from bertrt.types import Precision, Task

# Agreement is measured against the first of these that ran.
REFERENCES = ("torch-pipeline", "torch", "bertrt-fp32")
SCHEMA = 1


def run_benchmark(config: BenchConfig, log: Log | None = None) -> dict[str, Any]:
    """Run ``config``; the results dict is described in ``benchmarks/README.md``."""
    log = log or _stderr
    started = time.perf_counter()
    models = bundle_models(config.bundle)
    notes: list[str] = []
    inputs = prepare_inputs(config, models, notes)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "smoke": config.smoke,
        "machine": machine_info(),
        "config": _config_dict(config),
        # The command line as the process received it, to rerun the same measurement.
        "command": list(sys.argv),
        "bundle": {
            "path": str(config.bundle),
            "variants": sorted({p.value for m in models.values() for p in m.variants}),
        },
        "load_average": {"start": load_average()},
        # Per step, the share of the machine's CPU time the hypervisor gave to other guests.
        "cpu_steal": {},
        "skipped": {},
        "notes": notes,
    }
    if config.wants("gemm"):
        # Before any engine's thread pool exists in this process to compete with BLAS.
        log("gemm: the machine's fp32 matrix-multiply rate")
        before = gemm_rate(config.gemm_size, threads=config.threads)
    recorder = measure_all(config, models, inputs, results, log)
    results["figures"] = recorder.figures
    if config.wants("gemm"):
        # Again right after the big forwards, so a change of background load shows; the
        # better of the two is the peak each forward is compared with.
        after = gemm_rate(config.gemm_size, threads=config.threads)
        results["gemm"] = {**max(before, after, key=lambda g: g["peak_gflops"]), "runs": [before, after]}
        results["gemm"]["peak_batch"] = peak_batch_rates(recorder.figures, models, results["gemm"]["peak_gflops"])
    if config.wants("footprint"):
        results["footprint"] = _footprint(config, models, inputs, log)
    results["load_average"]["end"] = load_average()
    results["agreement"] = report.agreement(recorder.outputs, REFERENCES)
    results["fidelity"] = report.fidelity(recorder.vectors, report.FIDELITY_REFERENCES)
    results["ratios"] = report.speedups(recorder.figures, BASELINES)
    results["overhead"] = report.overhead(recorder.figures)
    results["targets"] = report.targets(results)
    results["seconds"] = time.perf_counter() - started
    return results


def measure_all(
    config: BenchConfig, models: Mapping[Task, ModelInfo], inputs: Inputs, results: dict[str, Any], log: Log
) -> Recorder:
    """Every step on every system that supports it; the load average before each step and
    the systems that could not run go into ``results``."""
    recorder = Recorder()
    copies = open_system_copies(config, models, results["skipped"], log)
    measurer = Measurer(config, recorder)
    for step in plan_steps(config, models, inputs):
        results["load_average"][step.label] = load_average()
        ticks = cpu_ticks()
        rounds = config.latency_rounds if step.latency else 1
        for round_index in range(rounds):
            measurer.round = round_index
            # Round r is served by each system's copy r % sessions (see BenchConfig.sessions).
            copy = round_index % config.sessions
            runnable = [systems[copy] for systems in copies if systems[copy].supports(step.operation)]
            suffix = f" (round {round_index + 1} of {rounds})" if rounds > 1 else ""
            if config.sessions > 1 and step.latency:
                suffix += f" [copy {copy + 1} of {config.sessions}]"
            # Every other round in reverse, so no system always follows the same one.
            for system in runnable if round_index % 2 == 0 else runnable[::-1]:
                log(f"{step.label}: {system.name}{suffix}")
                step.run(measurer, system)
        results["cpu_steal"][step.label] = steal_share(ticks, cpu_ticks())
    for systems in copies:
        for system in systems:
            system.close()
    copies.clear()
    gc.collect()
    return recorder


def open_system_copies(
    config: BenchConfig, models: Mapping[Task, ModelInfo], skipped: dict[str, str], log: Log
) -> list[list[System]]:
    """``config.sessions`` independent copies of every system that can run here, one list
    per system (each copy opens sessions of its own on first use)."""
    first = open_systems(config, models, skipped, log)
    return [
        [system] + [make_system(system.name, models, system.settings) for _ in range(1, config.sessions)]
        for system in first
    ]


def open_systems(
    config: BenchConfig, models: Mapping[Task, ModelInfo], skipped: dict[str, str], log: Log
) -> list[System]:
    """The requested systems that can run here (models load on first use); the others are
    noted in ``skipped`` with the reason."""
    settings = SystemSettings(config.threads, config.batch_size, config.device)
    systems = []
    for name in config.systems:
        try:
            systems.append(make_system(name, models, settings))
        except BertrtError as exc:
            skipped[name] = str(exc)
            log(f"skip {name}: {exc}")
    return systems


def prepare_inputs(config: BenchConfig, models: Mapping[Task, ModelInfo], notes: list[str]) -> Inputs:
    """W1 texts, the W2 stream and the W3 questions; a workload whose data is not installed
    is skipped with a line in ``notes``."""
    text_model = models.get(Task.CLASSIFY) or next(iter(models.values()))
    tokenizer = workloads.load_tokenizer(text_model.directory)
    w1 = workloads.w1_texts(tokenizer, long_tokens=min(128, text_model.max_length))
    stream = squad = None
    if config.wants("w2"):
        try:
            stream = workloads.mixed_stream(config.stream_texts, config.seed)
            # W2 is specified at 256 tokens whatever the bundle's own limit (MiniLM's classifier
            # reads 512): every system then sees the same texts, cut the same way.
            stream = workloads.cap_tokens(tokenizer, stream, min(config.stream_max_tokens, text_model.max_length))
        except BertrtError as exc:
            notes.append(f"W2 skipped: {exc}")
    qa = models.get(Task.QA)
    if config.wants("w3") and qa is not None:
        fits = workloads.question_fits(workloads.load_tokenizer(qa.directory), qa.max_length, qa.doc_stride or 0)
        try:
            squad = workloads.squad_pairs(config.squad_path, config.qa_questions, config.seed, fits)
        except BertrtError as exc:
            notes.append(f"W3 skipped: {exc}")
    return Inputs(w1, stream, squad)


def peak_batch_rates(
    figures: Mapping[str, Mapping[str, Mapping[str, Any]]], models: Mapping[Task, ModelInfo], peak_gflops: float
) -> dict[str, Any]:
    """GFLOP/s each system reaches on W2's biggest batch: at its median forward (``gflops``)
    and at its fastest (``best_gflops``), whose ratio to the best GEMM rate, a best-of-runs
    figure as well, is ``share_of_peak``."""
    if Task.CLASSIFY not in models:
        return {}
    shape = BertShape.from_config(models[Task.CLASSIFY].directory / "config.json")
    rates = {}
    for key, by_system in figures.items():
        if not key.startswith("peak_batch."):
            continue
        for name, stats in by_system.items():
            flops = shape.forward_flops(stats["batch"], stats["seq"])
            best = flops / (stats["min_ms"] / 1e3) / 1e9
            rates[name] = {
                "batch": stats["batch"],
                "seq": stats["seq"],
                "gflops": flops / (stats["p50_ms"] / 1e3) / 1e9,
                "best_gflops": best,
                "share_of_peak": best / peak_gflops,
            }
    return rates


def _footprint(config: BenchConfig, models: Mapping[Task, ModelInfo], inputs: Inputs, log: Log) -> dict[str, Any]:
    # bertrt at every CPU-side precision that all three models have, then PyTorch.
    stacks = [
        f"bertrt-{p.value}" for p in (Precision.FP32, Precision.INT8) if all(p in m.variants for m in models.values())
    ]
    wants_torch = any(name.startswith("torch") for name in config.systems)
    if wants_torch and all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
        stacks.append("torch")
    question, context = "What kind of story does the film follow?", inputs.w1["long"]
    if inputs.squad is not None:
        question, context = inputs.squad.questions[0], inputs.squad.contexts[0]
    log(f"footprint: {', '.join(stacks)}, each in a fresh process")
    return measure_footprint(
        config.bundle,
        threads=config.threads,
        texts=list(inputs.w1.values()),
        question=question,
        context=context,
        stacks=stacks,
        import_repeats=2 if config.smoke else 5,
    )


def _config_dict(config: BenchConfig) -> dict[str, Any]:
    data = asdict(config)
    data.update(bundle=str(config.bundle), squad_path=str(config.squad_path), device=config.device.value)
    return data


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
