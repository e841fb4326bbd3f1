"""Turning figures into claims: speed-ups against every baseline, agreement between
systems, the fidelity of sentence vectors, the targets of the benchmark issues, and the
printed (Markdown) table.

A figure's *cost* is its median latency (``p50_ms``) or, for a stream, the time per item
(``1 / items_per_s``); the speed-up of system S over baseline B is ``cost(B) / cost(S)``,
always between figures measured in the same run.

Example::

    speedups({"w1.classify.short": {"ort": {"p50_ms": 4.0}, "bertrt-fp32": {"p50_ms": 2.0}}}, ("ort",))
    # {"w1.classify.short": {"bertrt-fp32": {"ort": 2.0}}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bertrt.bench.config import TWIN_SYSTEM

# Figure-key prefixes shown in the printed table (scaling curves go to the plots).
TABLE_PREFIXES = ("w1.", "w2.", "w3.", "peak_batch.")
# The baselines whose speed-ups get a column in the table.
TABLE_BASELINES = ("torch-pipeline", "optimum-pipeline", "torch", "ort", "st-onnx", "st-int8", "torch-bf16")
FOOTPRINT_STACKS = ("bertrt-fp32", "bertrt-int8", "torch")
# Sentence vectors are compared with the first of these that ran: sentence-transformers'
# PyTorch fp32 vectors are what its users get.
FIDELITY_REFERENCES = ("st-torch", "torch")


def cost(figure: Mapping[str, Any]) -> float:
    """Seconds-like cost of a figure: median latency, or time per item for a stream.

    >>> cost({"items_per_s": 4.0})
    0.25
    """
    if "p50_ms" in figure:
        return float(figure["p50_ms"]) / 1e3
    return 1.0 / float(figure["items_per_s"])


def speedups(figures: Mapping[str, Mapping[str, Mapping[str, Any]]], baselines: Sequence[str]) -> dict[str, Any]:
    """``{key: {system: {baseline: cost(baseline) / cost(system)}}}`` for every baseline
    measured on the same figure."""
    ratios: dict[str, Any] = {}
    for key, by_system in figures.items():
        present = [b for b in baselines if b in by_system]
        ratios[key] = {
            name: {b: cost(by_system[b]) / cost(figure) for b in present if b != name}
            for name, figure in by_system.items()
        }
    return ratios


# The figures of the zero-overhead comparison: W1 requests and model-level forwards.
OVERHEAD_PREFIXES = ("w1.", "scaling.", "peak_batch.")


def overhead(
    figures: Mapping[str, Mapping[str, Mapping[str, Any]]],
    system: str = "bertrt-fp32",
    baseline: str = "ort",
    twin: str = TWIN_SYSTEM,
) -> dict[str, Any]:
    """``system`` against ``baseline`` on every W1 and model-level figure both ran: per
    figure the speed-up (``baseline``'s p50 / ``system``'s), the speed-up round by round and
    the rounds ``system`` was ahead in; over all figures the lowest speed-up and the
    geometric mean of the figures' speed-ups with a 95% interval (figures as the samples:
    ``exp(mean ± 1.96 sd / sqrt(n))`` of their logs). Empty when either did not run.

    Where ``twin`` ran too (a second ``baseline`` with sessions of its own, making the same
    calls), each figure also has ``twin_ratio`` (``baseline``'s p50 / ``twin``'s), and
    ``twin`` sums them up: the twin's lowest, highest and geometric-mean speed-up, the
    ``band`` ``[1/d, d]`` where ``d`` is the twin's largest departure from 1.00 either way (how
    far two identical systems landed apart in this run), and ``behind_beyond_band``: the
    figures where ``system`` fell below that band, which drift between identical systems
    does not explain.

    >>> fig = {"w1.x": {"ort": {"p50_ms": 2.0, "rounds_p50_ms": [2.0, 2.0]},
    ...                 "bertrt-fp32": {"p50_ms": 1.0, "rounds_p50_ms": [1.0, 4.0]}}}
    >>> overhead(fig)["figures"]["w1.x"]
    {'ratio': 2.0, 'rounds': [2.0, 0.5], 'rounds_ahead': 1}
    """
    per_figure: dict[str, Any] = {}
    for key, by_system in figures.items():
        if not key.startswith(OVERHEAD_PREFIXES) or system not in by_system or baseline not in by_system:
            continue
        ours, theirs = by_system[system], by_system[baseline]
        rounds = [b / s for b, s in zip(theirs.get("rounds_p50_ms", []), ours.get("rounds_p50_ms", []))]
        per_figure[key] = {
            "ratio": cost(theirs) / cost(ours),
            "rounds": rounds,
            "rounds_ahead": sum(r > 1.0 for r in rounds),
        }
        if twin in by_system:
            per_figure[key]["twin_ratio"] = cost(theirs) / cost(by_system[twin])
    if not per_figure:
        return {}
    logs = np.log([f["ratio"] for f in per_figure.values()])
    half = 1.96 * float(logs.std(ddof=1)) / np.sqrt(len(logs)) if len(logs) > 1 else float("nan")
    summary = {
        "system": system,
        "baseline": baseline,
        "figures": per_figure,
        "lowest": float(min(f["ratio"] for f in per_figure.values())),
        "geomean": float(np.exp(logs.mean())),
        "geomean_ci95": [float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half))],
        "rounds_ahead": sum(f["rounds_ahead"] for f in per_figure.values()),
        "rounds": sum(len(f["rounds"]) for f in per_figure.values()),
    }
    twin_ratios = {key: f["twin_ratio"] for key, f in per_figure.items() if "twin_ratio" in f}
    if twin_ratios:
        twin_logs = np.log(list(twin_ratios.values()))
        departure = float(np.exp(np.abs(twin_logs).max()))
        summary["twin"] = {
            "system": twin,
            "figures": len(twin_ratios),
            "lowest": float(min(twin_ratios.values())),
            "highest": float(max(twin_ratios.values())),
            "geomean": float(np.exp(twin_logs.mean())),
            "band": [1.0 / departure, departure],
            "behind_beyond_band": sorted(k for k in twin_ratios if per_figure[k]["ratio"] < 1.0 / departure),
        }
    return summary


def agreement(outputs: Mapping[str, Mapping[str, Sequence[Any]]], references: Sequence[str]) -> dict[str, Any]:
    """Share of identical outputs (labels, answer texts) of each system against the first
    of ``references`` that produced the figure."""
    shares: dict[str, Any] = {}
    for key, by_system in outputs.items():
        reference = next((r for r in references if r in by_system), None)
        if reference is None:
            continue
        expected = by_system[reference]
        shares[key] = {
            "reference": reference,
            "systems": {
                name: sum(a == b for a, b in zip(got, expected)) / max(len(expected), 1)
                for name, got in by_system.items()
            },
        }
    return shares


def fidelity(vectors: Mapping[str, Mapping[str, np.ndarray]], references: Sequence[str]) -> dict[str, Any]:
    """Min and mean cosine between each system's sentence vectors and those of the first of
    ``references`` that produced the figure, text by text.

    >>> vectors = {"w2.embed": {"st-torch": np.eye(2), "x": np.array([[1.0, 1.0], [0.0, 1.0]])}}
    >>> fidelity(vectors, ("st-torch",))["w2.embed"]["systems"]["x"]
    {'min_cosine': 0.7071067811865475, 'mean_cosine': 0.8535533905932737}
    """
    report: dict[str, Any] = {}
    for key, by_system in vectors.items():
        reference = next((r for r in references if r in by_system), None)
        if reference is None:
            continue
        expected = _unit_rows(by_system[reference])
        systems = {}
        for name, got in by_system.items():
            cosines = np.sum(_unit_rows(got) * expected, axis=1)
            systems[name] = {"min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean())}
        report[key] = {"reference": reference, "systems": systems}
    return report


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    rows = np.asarray(matrix, dtype=np.float64)
    norms: np.ndarray = np.linalg.norm(rows, axis=1, keepdims=True)
    unit: np.ndarray = rows / np.maximum(norms, 1e-12)
    return unit


@dataclass(frozen=True)
class Target:
    """One claim of the benchmark issue: ``value`` must be at least (or at most) ``bound``."""

    name: str
    bound: float
    at_least: bool = True

    def judge(self, value: float | None) -> dict[str, Any]:
        """The target with its measured value and whether it is met (None: not measured)."""
        met = None if value is None else (value >= self.bound if self.at_least else value <= self.bound)
        return {"name": self.name, "bound": self.bound, "at_least": self.at_least, "value": value, "met": met}


def targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets judged on ``results`` (a target whose systems did not run has
    ``met: None``)."""

    def ratio(key: str, system: str, baseline: str) -> float | None:
        value = results.get("ratios", {}).get(key, {}).get(system, {}).get(baseline)
        return None if value is None else float(value)

    peak = results.get("gemm", {}).get("peak_batch", {}).get("bertrt-fp32", {})
    footprint = results.get("footprint", {})
    rss = {stack: footprint.get(stack, {}).get("peak_rss_mb") for stack in FOOTPRINT_STACKS}
    qa_agreement = results.get("agreement", {}).get("w3.qa", {})
    checks: list[tuple[Target, float | None]] = [
        (
            Target("W1 short: bertrt-fp32 speed-up over the transformers pipeline", 3.0),
            ratio("w1.classify.short", "bertrt-fp32", "torch-pipeline"),
        ),
        (
            Target("W1 short: bertrt-fp32 speed-up over optimum's pipeline", 1.5),
            ratio("w1.classify.short", "bertrt-fp32", "optimum-pipeline"),
        ),
    ]
    for task in ("classify", "embed"):
        for system, bound in (("bertrt-fp32", 2.5), ("bertrt-int8", 4.0)):
            checks.append(
                (
                    Target(f"W2 {task}: {system} speed-up over the transformers pipeline", bound),
                    ratio(f"w2.{task}", system, "torch-pipeline"),
                )
            )
    checks += [
        (
            Target("W3: bertrt-fp32 speed-up over the transformers QA pipeline", 2.5),
            ratio("w3.qa", "bertrt-fp32", "torch-pipeline"),
        ),
        (
            Target("W3: bertrt-fp32 answers equal to the transformers pipeline's", 0.995),
            qa_agreement.get("systems", {}).get("bertrt-fp32")
            if qa_agreement.get("reference") == "torch-pipeline"
            else None,
        ),
        (Target("Large batch: bertrt-fp32 share of the measured GEMM rate", 0.7), peak.get("share_of_peak")),
    ]
    for stack in ("bertrt-fp32", "bertrt-int8"):
        checks.append(
            (
                Target(f"Footprint: {stack} peak RSS / PyTorch peak RSS", 0.4, at_least=False),
                rss[stack] / rss["torch"] if rss[stack] and rss["torch"] else None,
            )
        )
    checks.append((Target("import bertrt, seconds", 0.3, at_least=False), footprint.get("import_bertrt_s")))
    checks.append(
        (
            Target("W1 and model-level: lowest bertrt-fp32 speed-up over ort on the same file", 1.0),
            results.get("overhead", {}).get("lowest"),
        )
    )
    twin = results.get("overhead", {}).get("twin")
    if twin:
        checks.append(
            (
                Target("W1 and model-level: bertrt-fp32 figures below ort-twin's band around ort", 0.0, at_least=False),
                float(len(twin["behind_beyond_band"])),
            )
        )
    checks += peer_checks(results)
    return [target.judge(value) for target, value in checks]


def peer_checks(results: Mapping[str, Any]) -> list[tuple[Target, float | None]]:
    """The targets against the peers users pick (sentence-transformers, PyTorch bf16), the
    forward ones on W2's biggest batch (32 x 256)."""

    def ratio(key: str, system: str, baseline: str) -> float | None:
        value = results.get("ratios", {}).get(key, {}).get(system, {}).get(baseline)
        return None if value is None else float(value)

    cosines = results.get("fidelity", {}).get("w2.embed", {}).get("systems", {})

    def cosine_lead(stat: str) -> float | None:
        ours, theirs = cosines.get("bertrt-int8", {}).get(stat), cosines.get("st-int8", {}).get(stat)
        return None if ours is None or theirs is None else ours - theirs

    figures = results.get("figures", {})
    forward: Mapping[str, Any] = next((f for key, f in figures.items() if key.startswith("peak_batch.")), {})
    int8_lead = (
        cost(forward["bertrt-fp32"]) / cost(forward["bertrt-int8"])
        if "bertrt-fp32" in forward and "bertrt-int8" in forward
        else None
    )
    fastest = min((cost(f) for name, f in forward.items() if name.startswith("bertrt-")), default=None)
    against_bf16 = fastest / cost(forward["torch-bf16"]) if fastest and "torch-bf16" in forward else None
    return [
        (
            Target("W2 embed: bertrt-int8 speed-up over sentence-transformers' dynamic int8", 1.5),
            ratio("w2.embed", "bertrt-int8", "st-int8"),
        ),
        (Target("W2 embed: bertrt-int8 min cosine to st-torch, less st-int8's", 0.0), cosine_lead("min_cosine")),
        (Target("W2 embed: bertrt-int8 mean cosine to st-torch, less st-int8's", 0.0), cosine_lead("mean_cosine")),
        (
            Target("W2 embed: bertrt-fp32 speed-up over sentence-transformers' ONNX backend", 1.25),
            ratio("w2.embed", "bertrt-fp32", "st-onnx"),
        ),
        (Target("32 x 256 forward: bertrt-int8 speed-up over bertrt-fp32", 2.5), int8_lead),
        (Target("32 x 256 forward: fastest bertrt variant's time / torch-bf16's", 1.0, at_least=False), against_bf16),
    ]


def markdown_table(results: Mapping[str, Any]) -> str:
    """The results as Markdown: one row per figure and system with its value, speed-ups
    over the main baselines and agreement; then the GEMM rate, footprint and targets."""
    figures, ratios = results.get("figures", {}), results.get("ratios", {})
    columns = [b for b in TABLE_BASELINES if any(b in s for s in figures.values())]
    lines = [
        "| figure | system | value | " + " | ".join(f"x {b}" for b in columns) + " | agreement |",
        "|" + "---|" * (4 + len(columns)),
    ]
    for key, by_system in figures.items():
        if not key.startswith(TABLE_PREFIXES):
            continue
        agree = results.get("agreement", {}).get(key, {}).get("systems", {})
        for name, figure in by_system.items():
            speed = [_fmt(ratios.get(key, {}).get(name, {}).get(b), "x") for b in columns]
            share = f"{agree[name]:.1%}" if name in agree else ""
            lines.append(f"| {key} | {name} | {_value(figure)} | " + " | ".join(speed) + f" | {share} |")
    return "\n".join(lines + [""] + _summary(results))


def _summary(results: Mapping[str, Any]) -> list[str]:
    lines = []
    gemm = results.get("gemm")
    if gemm:
        lines.append(
            f"GEMM fp32 {gemm['size']}^2: NumPy {gemm['numpy_gflops']:.1f} GFLOP/s, "
            f"ONNX Runtime {_fmt(gemm['ort_gflops'], ' GFLOP/s')}"
        )
        for name, rate in gemm.get("peak_batch", {}).items():
            lines.append(
                f"  {name} at {rate['batch']}x{rate['seq']}: {rate['gflops']:.1f} GFLOP/s at p50, "
                f"{rate['best_gflops']:.1f} at best = {rate['share_of_peak']:.0%} of peak"
            )
    for key, entry in results.get("fidelity", {}).items():
        for name, stats in entry["systems"].items():
            if name != entry["reference"]:
                lines.append(
                    f"{key} cosine to {entry['reference']}, {name}: "
                    f"min {stats['min_cosine']:.4f}, mean {stats['mean_cosine']:.4f}"
                )
    paired = results.get("overhead")
    if paired:
        low, high = paired["geomean_ci95"]
        lines.append(
            f"{paired['system']} over {paired['baseline']} on {len(paired['figures'])} W1 and model-level figures: "
            f"geometric mean {paired['geomean']:.3f}x (95% interval {low:.3f}-{high:.3f}), "
            f"lowest {paired['lowest']:.3f}x, ahead in {paired['rounds_ahead']} of {paired['rounds']} rounds"
        )
        twin = paired.get("twin")
        if twin:
            behind = ", ".join(twin["behind_beyond_band"]) or "none"
            lines.append(
                f"{twin['system']} over {paired['baseline']} on the same {twin['figures']} figures "
                f"(identical systems): {twin['lowest']:.3f}-{twin['highest']:.3f}x, "
                f"geometric mean {twin['geomean']:.3f}x; {paired['system']} below the band "
                f"{twin['band'][0]:.3f}-{twin['band'][1]:.3f}x on: {behind}"
            )
    footprint = results.get("footprint")
    if footprint:
        for stack in FOOTPRINT_STACKS:
            if "peak_rss_mb" in footprint.get(stack, {}):
                lines.append(
                    f"Peak RSS, {stack} serving W1 with all three models: {footprint[stack]['peak_rss_mb']:.0f} MiB"
                )
        lines.append(f"import bertrt: {footprint['import_bertrt_s'] * 1e3:.0f} ms")
    lines += ["", "| target | bound | value | met |", "|---|---|---|---|"]
    for t in results.get("targets", []):
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['name']} | {'>=' if t['at_least'] else '<='} {t['bound']} | {_fmt(t['value'])} | {met} |")
    return lines


def _value(figure: Mapping[str, Any]) -> str:
    if "p50_ms" in figure:
        return f"p50 {figure['p50_ms']:.2f} ms (p90 {figure['p90_ms']:.2f}, p99 {figure['p99_ms']:.2f})"
    return f"{figure['items_per_s']:.1f} items/s"


def _fmt(value: float | None, unit: str = "") -> str:
    return "" if value is None else f"{value:.2f}{unit}"


def write_json(results: Mapping[str, Any], path: Path) -> Path:
    """Write ``results`` as indented JSON at ``path`` (folders created); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return path
