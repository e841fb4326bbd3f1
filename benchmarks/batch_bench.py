"""Batch jobs measured: the local engine against ``bertrt classify -``, Ray Data against
the local engine with 1 and 2 actors, cold start, and the memory of Ray's own processes.

Every system classifies the same W2 texts (the mixed review stream, capped at 256 tokens,
each on one line: whitespace runs become one space) in a fresh process, timed from start
to exit, so every system pays its own start-up:

* ``classify-stdin``: ``bertrt classify - --json`` reading the texts on stdin;
* ``batch-local``: ``bertrt batch classify TEXTS.txt --out OUT.jsonl``;
* ``batch-ray-1``, ``batch-ray-2``: the same with ``--engine ray`` and 1 or 2 actors
  sharing ``--cpus`` CPUs (one actor of all of them, or two of half), on a Ray instance
  the command starts for itself (on loopback).

Each system runs twice per round: on ``--texts`` texts and on ``--cold-texts`` texts. The
small job's wall time is the **cold start** (interpreter, imports, Ray, bundle load);
rows/s come end to end (big job) and **marginal** ((big - small rows) / (big - small
seconds): the rate once started). Rounds alternate the systems, so a change in background
load hits all of them alike; figures are medians over rounds. While a job runs, its
process tree is sampled every 0.2 s: the peak memory (PSS, so shared pages count once) of
the driver, of the actors, and of **Ray's own processes** (GCS, raylet, agents, idle
workers). The labels of every system are compared with ``classify-stdin``'s.

    python -m bertrt.bench.batch_bench --models models/minilm --texts 2000 --rounds 3 \\
        --out benchmarks/results/batch-minilm.json --plot benchmarks/results/batch-minilm.png
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bertrt.bench import workloads
from bertrt.bench.machine import load_average, machine_info

SYSTEMS = ("classify-stdin", "batch-local", "batch-ray-1", "batch-ray-2")
W2_TOKENS = 256
SAMPLE_S = 0.2
ACTOR_TITLE = "BundleActor"  # Ray names an actor's process after its class
GROUPS = {"driver": "the bertrt command", "actors": "Ray actors (the bundle)", "ray_own": "Ray's own processes"}


def w2_file(models: Path, n_texts: int, folder: Path) -> Path:
    """W2's first ``n_texts`` texts, capped at 256 tokens, one per line, in ``folder``."""
    tokenizer = workloads.load_tokenizer(models / "classifier")
    texts = workloads.cap_tokens(tokenizer, workloads.mixed_stream(n_texts, seed=0), W2_TOKENS)
    path = folder / f"w2-{n_texts}.txt"
    path.write_text("".join(" ".join(text.split()) + "\n" for text in texts), encoding="utf-8")
    return path


def command(system: str, models: Path, texts: Path, out: Path, cpus: int) -> list[str]:
    """The command line that runs ``system`` on ``texts`` (stdout: labels or the report)."""
    bertrt = [sys.executable, "-m", "bertrt.cli"]
    common = ["--models", str(models), "--device", "cpu"]
    if system == "classify-stdin":
        return [*bertrt, "classify", "-", *common, "--json"]
    batch = [*bertrt, "batch", "classify", str(texts), "--out", str(out), *common, "--overwrite", "--json"]
    if system == "batch-local":
        return batch
    actors = int(system.rsplit("-", 1)[1])
    return [*batch, "--engine", "ray", "--actors", str(actors), "--cpus-per-actor", str(max(1, cpus // actors))]


def run_once(system: str, models: Path, texts: Path, out: Path, cpus: int) -> dict[str, Any]:
    """Run ``system`` on ``texts`` once: wall seconds, peak memory by process group, labels."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray on loopback only
    stdin = texts.open("rb") if system == "classify-stdin" else subprocess.DEVNULL
    started = time.perf_counter()
    process = subprocess.Popen(
        command(system, models, texts, out, cpus), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    with _memory_peaks(process) as peaks:
        stdout, stderr = process.communicate()  # reads the pipes while the process runs
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{system} failed: {stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    if system == "classify-stdin":
        labels = [item["label"] for item in json.loads(stdout)]
    else:
        labels = [json.loads(line)["label"] for line in out.read_text(encoding="utf-8").splitlines()]
    return {"seconds": seconds, "memory_mib": dict(peaks), "labels": labels}


@contextmanager
def _memory_peaks(process: subprocess.Popen[bytes]) -> Iterator[dict[str, float]]:
    """Peak PSS (MiB) of the driver, the actors and Ray's own processes while ``process``
    runs, sampled on a thread until the block ends."""
    import psutil

    peaks = dict.fromkeys(GROUPS, 0.0)
    root = psutil.Process(process.pid)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set() and process.poll() is None:
            now = dict.fromkeys(peaks, 0.0)
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for member in tree:
                try:
                    info = member.memory_full_info()
                    name = " ".join(member.cmdline())
                except psutil.Error:
                    continue
                group = "driver" if member.pid == root.pid else "actors" if ACTOR_TITLE in name else "ray_own"
                now[group] += getattr(info, "pss", info.rss) / 2**20
            for group, value in now.items():
                peaks[group] = max(peaks[group], round(value, 1))
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peaks
    finally:
        done.set()
        sampler.join()


def measure(
    models: Path, n_texts: int, cold_texts: int, rounds: int, cpus: int, systems: tuple[str, ...]
) -> dict[str, Any]:
    """Every system on both sizes, ``rounds`` times, alternating; raw runs and figures."""
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        folder = Path(tmp)
        sizes = {"big": w2_file(models, n_texts, folder), "cold": w2_file(models, cold_texts, folder)}
        runs: list[dict[str, Any]] = []
        for round_number in range(rounds):
            for system in systems:
                for size, texts in sizes.items():
                    load = load_average()
                    result = run_once(system, models, texts, folder / "out.jsonl", cpus)
                    runs.append({"round": round_number, "system": system, "size": size, "load_average": load, **result})
                    print(
                        f"round {round_number + 1}/{rounds} {system:>14} {size:>4}: {result['seconds']:6.1f} s",
                        flush=True,
                    )
    return {"runs": runs, **figures(runs, n_texts, cold_texts)}


def figures(runs: list[dict[str, Any]], n_texts: int, cold_texts: int) -> dict[str, Any]:
    """Medians over rounds per system, ratios to the baselines, and label agreement."""
    by_system: dict[str, dict[str, Any]] = {}
    reference = next(r["labels"] for r in runs if r["system"] == "classify-stdin" and r["size"] == "big")
    for system in dict.fromkeys(r["system"] for r in runs):
        big = [r for r in runs if r["system"] == system and r["size"] == "big"]
        cold = [r for r in runs if r["system"] == system and r["size"] == "cold"]
        big_s = statistics.median(r["seconds"] for r in big)
        cold_s = statistics.median(r["seconds"] for r in cold)
        by_system[system] = {
            "rows_per_s": round(n_texts / big_s, 2),
            "marginal_rows_per_s": round((n_texts - cold_texts) / (big_s - cold_s), 2) if big_s > cold_s else None,
            "cold_start_s": round(cold_s, 2),
            "seconds": [round(r["seconds"], 2) for r in big],
            "peak_memory_mib": {group: max(r["memory_mib"][group] for r in big) for group in GROUPS},
            "label_agreement": statistics.mean(
                sum(a == b for a, b in zip(r["labels"], reference, strict=True)) / len(reference) for r in big
            ),
        }
    pairs = [("batch-local", "classify-stdin"), ("batch-ray-1", "batch-local"), ("batch-ray-2", "batch-local")]
    ratios = {
        f"{a} / {b}": {
            key: round(by_system[a][key] / by_system[b][key], 3)
            for key in ("rows_per_s", "marginal_rows_per_s")
            if by_system[a][key] and by_system[b][key]
        }
        for a, b in pairs
        if a in by_system and b in by_system
    }
    return {"figures": by_system, "ratios": ratios}


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Three panels: rows/s (end to end and marginal), cold start, peak memory by group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = results["figures"]
    names = list(figs)
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    positions = range(len(names))
    axes[0].bar([p - 0.2 for p in positions], [figs[n]["rows_per_s"] for n in names], width=0.4, label="end to end")
    axes[0].bar([p + 0.2 for p in positions], [figs[n]["marginal_rows_per_s"] or 0 for n in names], width=0.4,
                label="once started")  # fmt: skip
    axes[0].set_title("W2 classify: rows/s (higher is better)")
    axes[0].legend()
    axes[1].bar(positions, [figs[n]["cold_start_s"] for n in names])
    axes[1].set_title(f"cold start: a {results['config']['cold_texts']}-row job, s (lower is better)")
    bottom = [0.0] * len(names)
    for group, label in GROUPS.items():
        values = [figs[n]["peak_memory_mib"][group] for n in names]
        axes[2].bar(positions, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes[2].set_title("peak memory (PSS, MiB) by process group")
    axes[2].legend()
    for axis in axes:
        axis.set_xticks(list(positions), names, rotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertrt.bench.batch_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models/minilm"), help="bundle folder")
    parser.add_argument("--texts", type=int, default=2000, help="W2 texts of the timed job")
    parser.add_argument("--cold-texts", type=int, default=32, help="W2 texts of the cold-start job")
    parser.add_argument("--rounds", type=int, default=3, help="times every system runs each job")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs the Ray actors share")
    parser.add_argument("--system", action="append", choices=SYSTEMS, help="systems to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch-minilm.json"), help="results JSON")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the figures")
    args = parser.parse_args(argv)
    systems = tuple(args.system or SYSTEMS)
    if "classify-stdin" not in systems:
        parser.error("--system classify-stdin is the reference the others are compared with; keep it")
    measured = measure(args.models.resolve(), args.texts, args.cold_texts, args.rounds, args.cpus, systems)
    results = {
        "schema": 1,
        "machine": machine_info(),
        "versions": {name: _version(name) for name in ("ray", "pyarrow")},
        "config": {
            "texts": args.texts,
            "cold_texts": args.cold_texts,
            "rounds": args.rounds,
            "cpus": args.cpus,
            "models": str(args.models),
            "systems": list(systems),
        },  # fmt: skip
        "command": " ".join(["python -m bertrt.bench.batch_bench", *(argv if argv is not None else sys.argv[1:])]),
        "figures": measured["figures"],
        "ratios": measured["ratios"],
        "runs": [{k: v for k, v in run.items() if k != "labels"} for run in measured["runs"]],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        write_plot(results, args.plot)
    shown = ("rows_per_s", "marginal_rows_per_s", "cold_start_s", "peak_memory_mib")
    summary = {name: {key: figure[key] for key in shown} for name, figure in results["figures"].items()}
    print(json.dumps({"figures": summary, "ratios": results["ratios"]}, indent=2))
    return 0


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
