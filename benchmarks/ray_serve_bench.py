"""Ray Serve benchmark: what ``bertrt serve --engine ray`` costs and gains against ``bertrt serve``.

One classify app on loopback, single-text requests from closed-loop clients (the raw-HTTP
load generator of :mod:`bertrt.bench.serve_bench`), rounds alternating the two engines so
that background load hits both alike:

* **overhead**: ``bertrt serve`` (uvicorn, one process) against Ray Serve (HTTP proxy,
  ingress replica, one task replica with as many CPUs as ``bertrt serve`` gives ONNX
  Runtime threads), at concurrency 1 and 32: p50/p99 latency, requests/s, and the CPU
  time per request of all the server's processes;
* **batch sizes**: the ``bertrt_batch_size`` histogram of each engine under 32 clients;
* **layouts**: 1 replica x 2 CPUs against 2 replicas x 1 CPU (32 clients);
* **scaling**: T(N) requests/s of N one-CPU replicas for N up to the cores, and the
  efficiency T(N) / (N x T(1));
* **cold start**: ``ray.init``, ``serve.start`` and deploy-to-``/health`` 200 of Ray Serve,
  against ``bertrt serve`` from process start to ``/health`` 200;
* **memory**: resident (PSS) memory of Ray's own processes (GCS, raylet, agents, Serve's
  controller and proxy, idle workers), of the ingress and of the task replica, against the
  one ``bertrt serve`` process.

Ray runs as a local instance of this process (its own temp folder, no dashboard, loopback),
started afresh each round: each round also measures a cold start.

Example::

    python -m bertrt.bench.ray_serve_bench --models models/minilm --seconds 10 --rounds 2 \\
        --out benchmarks/results/ray-serve.json --plot benchmarks/results/ray-serve.png
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Ray on loopback: Ray moves 127.0.0.1 to the machine's network address unless told this is
# a one-machine setup. Read when ray is first imported, so set before anything imports it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from bertrt.bench.machine import load_average, machine_info  # noqa: E402
from bertrt.bench.serve_bench import (  # noqa: E402
    ENDPOINTS,
    RunResult,
    ServeBenchConfig,
    batch_size_stats,
    client,
    free_port,
    request_bodies,
    running_server,
    scrape_metrics,
    summarize,
)

from bertrt.lanes import usable_cores  # noqa: E402

TASK = "classify"
CONCURRENCIES = (1, 32)
# Ray's processes by what they are, matched against their process titles and commands.
RAY_PROCESS_KINDS = (
    ("task replica", re.compile(r"ServeReplica:bertrt:classify")),
    ("ingress", re.compile(r"ServeReplica:bertrt:ingress")),
    ("serve controller", re.compile(r"ServeController")),
    ("serve proxy", re.compile(r"ProxyActor")),
    ("gcs", re.compile(r"gcs_server")),
    ("raylet", re.compile(r"raylet")),
    ("agents and monitors", re.compile(r"agent|monitor|dashboard")),
    ("idle workers", re.compile(r"ray::IDLE|default_worker")),
)


@dataclass(frozen=True)
class RayBenchConfig:
    """One benchmark run (see the module docstring)."""

    models: Path
    texts: str = "sentences"
    seconds: float = 10.0
    warmup: float = 3.0
    rounds: int = 2
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    n_texts: int = 2000
    seed: int = 0

    def load(self, clients: int) -> ServeBenchConfig:
        """The load generator's settings for ``clients`` clients."""
        return ServeBenchConfig(
            models=self.models,
            task=TASK,
            texts=self.texts,
            clients=clients,
            seconds=self.seconds,
            warmup=self.warmup,
            n_texts=self.n_texts,
            seed=self.seed,
            model_costs=False,
        )


def cores() -> int:
    """CPUs this process may run on."""
    return usable_cores()


def run_ray_serve_bench(config: RayBenchConfig, log: Any = print) -> dict[str, Any]:
    """Every measurement, ``rounds`` times, engines alternating; the results dict (see the README)."""
    from bertrt.serve.config import serving_threads

    bodies = request_bodies(config.load(1))
    threads = serving_threads()
    layouts = {"1x2": (1, 2.0), "2x1": (2, 1.0), **{f"{n}x1": (n, 1.0) for n in range(1, cores() + 1)}}
    runs: dict[str, list[Any]] = {"uvicorn": [], "ray": []}
    for number in range(config.rounds):
        engines = ("uvicorn", "ray") if number % 2 == 0 else ("ray", "uvicorn")
        for engine in engines:
            log(f"round {number + 1}/{config.rounds}: {engine}")
            if engine == "uvicorn":
                runs[engine].append(measure_uvicorn(config, bodies, threads, log))
            else:
                runs[engine].append(measure_ray(config, bodies, threads, layouts, log))
    return {
        "benchmark": "ray-serve",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {**asdict(config), "models": str(config.models), "intra_op_threads": threads, "cores": cores()},
        "figures": figures(runs, layouts),
        "rounds": runs,
    }


def measure_uvicorn(config: RayBenchConfig, bodies: list[bytes], threads: int, log: Any) -> dict[str, Any]:
    """``bertrt serve`` (one process): start to ready, load at each concurrency, memory."""
    args = ["--device", "cpu", "--task", TASK, *batching_args(config), "--intra-op-threads", str(threads)]
    started = time.perf_counter()
    with running_server(config.models, args) as (port, pid):
        record: dict[str, Any] = {"start_to_ready_s": round(time.perf_counter() - started, 2)}
        for clients in CONCURRENCIES:
            result = load(port, [pid], bodies, config.load(clients))
            record[f"c{clients}"] = {**summarize([result]), **loads(result)}
            log(f"  uvicorn, {clients} clients: {summarize([result])}")
        record["batch_sizes"] = batch_histogram(scrape_metrics(port))
        record["memory_mib"] = {"bertrt serve": round(pss_mib(pid), 1)}
    return record


def measure_ray(
    config: RayBenchConfig, bodies: list[bytes], threads: int, layouts: dict[str, tuple[int, float]], log: Any
) -> dict[str, Any]:
    """Ray Serve: cold start, load at each concurrency on the ``bertrt serve``-like layout,
    batch sizes, memory by process, then each layout at 32 clients."""
    from ray import serve

    from bertrt.serve.ray_engine import APP_NAME, RayServeOptions

    port = free_port()
    with ray_instance() as (ray, timings):
        started = time.perf_counter()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        timings["serve_start_s"] = round(time.perf_counter() - started, 2)
        timings["deploy_to_ready_s"] = deploy(config, RayServeOptions(replica_cpus=float(threads)), port)
        record: dict[str, Any] = {"cold_start": timings}
        pids = ray_pids()
        for clients in CONCURRENCIES:
            result = load(port, pids, bodies, config.load(clients))
            record[f"c{clients}"] = {**summarize([result]), **loads(result)}
            log(f"  ray, {clients} clients: {summarize([result])}")
        record["batch_sizes"] = batch_histogram(scrape_metrics(port))
        record["memory_mib"] = memory_by_kind(ray_pids())
        record["layouts"] = {}
        for name, (replicas, cpus) in layouts.items():
            # Taken down first: a rolling update would wait for CPUs the old replicas hold.
            serve.delete(APP_NAME)
            deploy(config, RayServeOptions(replicas=replicas, replica_cpus=cpus), port)
            result = load(port, ray_pids(), bodies, config.load(max(CONCURRENCIES)))
            record["layouts"][name] = {**summarize([result]), **loads(result)}
            log(f"  ray, {replicas} replica(s) x {cpus:g} CPU: {summarize([result])}")
        serve.shutdown()
    return record


@contextlib.contextmanager
def ray_instance() -> Iterator[tuple[Any, dict[str, float]]]:
    """A fresh local Ray instance (every core, loopback, no dashboard, a temp folder of its
    own) and how long ``ray.init`` took; shut down, folder removed, at the end."""
    import ray

    temp = tempfile.mkdtemp(prefix="brt-bench-", dir="/tmp")
    started = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=cores(),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp,
        log_to_driver=False,
    )
    try:
        yield ray, {"ray_init_s": round(time.perf_counter() - started, 2)}
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def deploy(config: RayBenchConfig, options: Any, port: int) -> float:
    """(Re)deploy the classify app with ``options``; seconds until ``/health`` answers 200."""
    from ray import serve

    from bertrt.batcher import BatcherOptions
    from bertrt.serve.config import ServeConfig
    from bertrt.serve.ray_app import build_application
    from bertrt.serve.ray_engine import APP_NAME, resolve_config
    from bertrt.types import Device, Task

    batching = BatcherOptions(max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms)
    served = ServeConfig(models=config.models, device=Device.CPU, tasks=(Task.CLASSIFY,), batching=batching)
    started = time.perf_counter()
    serve.run(build_application(resolve_config(served), options), name=APP_NAME, route_prefix="/")
    wait_healthy(port)
    return round(time.perf_counter() - started, 2)


def wait_healthy(port: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the Ray Serve app was not ready after {timeout} s")


def batching_args(config: RayBenchConfig) -> list[str]:
    return ["--max-batch-size", str(config.max_batch_size), "--max-wait-ms", str(config.max_wait_ms)]


def load(port: int, pids: list[int], bodies: list[bytes], config: ServeBenchConfig) -> RunResult:
    """Closed-loop clients on ``port``; the CPU time of ``pids`` over the timed window, and
    the model runs of the load (from ``/metrics`` before and after)."""
    before = batch_size_stats(scrape_metrics(port), TASK)
    result = RunResult(load_before=load_average())
    path, _ = ENDPOINTS[config.task]
    asyncio.run(_drive(port, pids, path, bodies, config, result))
    result.load_after = load_average()
    after = batch_size_stats(scrape_metrics(port), TASK)
    runs = after["runs"] - before["runs"]
    texts = after["runs"] * after["mean_texts_per_run"] - before["runs"] * before["mean_texts_per_run"]
    result.batch_sizes = {"runs": runs, "mean_texts_per_run": texts / runs if runs else 0.0}
    return result


async def _drive(
    port: int, pids: list[int], path: str, bodies: list[bytes], config: ServeBenchConfig, result: RunResult
) -> None:
    started = time.perf_counter()
    timed_from, stop_at = started + config.warmup, started + config.warmup + config.seconds
    step = max(1, len(bodies) // config.clients)
    clients = [client(port, path, bodies, i * step, timed_from, stop_at, result) for i in range(config.clients)]
    cpu = await asyncio.gather(_cpu_between(pids, timed_from, stop_at), *clients)
    result.server_cpu_s = cpu[0]
    result.window_s = config.seconds


async def _cpu_between(pids: list[int], start: float, stop: float) -> float:
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    before = cpu_seconds(pids)
    await asyncio.sleep(max(0.0, stop - time.perf_counter()))
    return cpu_seconds(pids) - before


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the live processes among ``pids``."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def loads(result: RunResult) -> dict[str, Any]:
    return {"load_before": result.load_before, "load_after": result.load_after}


def ray_pids() -> list[int]:
    """This process's Ray processes (the local instance's services, workers and replicas)."""
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)]


def pss_mib(pid: int) -> float:
    """Proportional set size of ``pid`` in MiB (shared pages split among their users; RSS
    where PSS is unavailable)."""
    import psutil

    process = psutil.Process(pid)
    try:
        return float(process.memory_full_info().pss) / 2**20
    except (psutil.AccessDenied, AttributeError):
        return float(process.memory_info().rss) / 2**20


def memory_by_kind(pids: list[int]) -> dict[str, float]:
    """PSS in MiB of the Ray instance's processes, summed by kind (see RAY_PROCESS_KINDS)."""
    import psutil

    totals: dict[str, float] = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            title = " ".join(process.cmdline()) or process.name()
            memory = pss_mib(pid)
        except psutil.Error:
            continue
        kind = next((name for name, pattern in RAY_PROCESS_KINDS if pattern.search(title)), "other")
        totals[kind] = round(totals.get(kind, 0.0) + memory, 1)
    totals["ray's own"] = round(sum(v for k, v in totals.items() if k not in ("task replica", "ingress")), 1)
    return totals


def batch_histogram(metrics: str) -> dict[str, float]:
    """Model runs by batch size (texts per run) of the classify task: ``{"<=1": n, ...}``,
    from the cumulative ``bertrt_batch_size`` buckets."""
    pattern = rf'^bertrt_batch_size_bucket{{(?=[^}}]*task="{TASK}")[^}}]*le="([^"]+)"[^}}]*}} (\S+)$'
    cumulative = [(le, float(count)) for le, count in re.findall(pattern, metrics, re.MULTILINE)]
    histogram, below = {}, 0.0
    for le, count in cumulative:
        label = "inf" if le == "+Inf" else str(int(float(le)))
        histogram[f"<={label}"] = count - below
        below = count
    return histogram


def figures(runs: dict[str, list[Any]], layouts: dict[str, tuple[int, float]]) -> dict[str, Any]:
    """The summary the README quotes: medians over rounds, and ratios within them."""
    uvicorn, ray = runs["uvicorn"], runs["ray"]
    overhead = {}
    for clients in CONCURRENCIES:
        key = f"c{clients}"
        both = {name: _median_summary([r[key] for r in engine]) for name, engine in runs.items()}
        both["ray_over_uvicorn"] = {
            metric: round(both["ray"][metric] / both["uvicorn"][metric], 2)
            for metric in ("p50_ms", "p99_ms", "throughput_rps", "server_cpu_ms_per_request")
            if both["ray"].get(metric) and both["uvicorn"].get(metric)
        }
        overhead[key] = both
    layout = {name: _median_summary([r["layouts"][name] for r in ray]) for name in layouts}
    scaling = {name: layout[name]["throughput_rps"] for name in layout if name.endswith("x1")}
    one = scaling.get("1x1")
    return {
        "overhead": overhead,
        "batch_sizes": {"uvicorn": uvicorn[-1]["batch_sizes"], "ray": ray[-1]["batch_sizes"]},
        "layouts": {
            "1x2": layout["1x2"],
            "2x1": layout["2x1"],
            "2x1_over_1x2_throughput": _ratio(layout["2x1"]["throughput_rps"], layout["1x2"]["throughput_rps"]),
        },
        "scaling": {
            "throughput_rps": scaling,
            "efficiency": {name: round(t / (int(name.split("x")[0]) * one), 2) for name, t in scaling.items()}
            if one
            else {},
        },
        "cold_start_s": {
            "bertrt serve": _median([r["start_to_ready_s"] for r in uvicorn]),
            **{key: _median([r["cold_start"][key] for r in ray]) for key in ray[0]["cold_start"]},
        },
        "memory_mib": {"bertrt serve": uvicorn[-1]["memory_mib"]["bertrt serve"], "ray": ray[-1]["memory_mib"]},
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` to 2 places; None when either is missing or zero (a window
    too short for any request to finish in it)."""
    return round(numerator / denominator, 2) if numerator and denominator else None


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else round((ordered[middle - 1] + ordered[middle]) / 2, 2)


def _median_summary(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    numbers = ("throughput_rps", "p50_ms", "p99_ms", "mean_texts_per_run", "server_cpu_ms_per_request")
    merged: dict[str, Any] = {"requests": sum(s.get("requests", 0) for s in summaries)}
    merged["errors"] = sum(s.get("errors", 0) for s in summaries)
    for name in numbers:
        values = [s[name] for s in summaries if s.get(name) is not None]
        merged[name] = _median(values) if values else None
    return merged


def write_plot(results: dict[str, Any], path: Path) -> Path:
    """The figures in one PNG (2 x 2 panels); needs matplotlib (the ``export`` extra)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt

    figures = results["figures"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    overhead = figures["overhead"]
    labels = [f"{engine}\n{key}" for key in overhead for engine in ("uvicorn", "ray")]
    p50 = [overhead[key][engine]["p50_ms"] or 0 for key in overhead for engine in ("uvicorn", "ray")]
    p99 = [overhead[key][engine]["p99_ms"] or 0 for key in overhead for engine in ("uvicorn", "ray")]
    positions = range(len(labels))
    axes[0, 0].bar([x - 0.2 for x in positions], p50, 0.4, label="p50")
    axes[0, 0].bar([x + 0.2 for x in positions], p99, 0.4, label="p99")
    axes[0, 0].set_xticks(list(positions), labels)
    axes[0, 0].set_title("Latency by engine and clients (ms, lower is better)")
    axes[0, 0].legend()
    for engine, offset in (("uvicorn", -0.2), ("ray", 0.2)):
        histogram = figures["batch_sizes"][engine]
        axes[0, 1].bar([x + offset for x in range(len(histogram))], list(histogram.values()), 0.4, label=engine)
        axes[0, 1].set_xticks(list(range(len(histogram))), list(histogram))
    axes[0, 1].set_title("Model runs by texts per run, 32 clients")
    axes[0, 1].legend()
    throughput = {name: figures["layouts"][name]["throughput_rps"] for name in ("1x2", "2x1")}
    throughput.update({f"scaling {n}": t for n, t in figures["scaling"]["throughput_rps"].items()})
    axes[1, 0].bar(list(throughput), [t or 0 for t in throughput.values()])
    axes[1, 0].set_title("Ray Serve requests/s, replicas x CPUs, 32 clients (higher is better)")
    memory = {k: v for k, v in figures["memory_mib"]["ray"].items() if k != "ray's own"}
    memory_labels = ["bertrt serve", *memory]
    axes[1, 1].barh(memory_labels, [figures["memory_mib"]["bertrt serve"], *memory.values()])
    axes[1, 1].set_title("Memory (PSS, MiB) of bertrt serve and of Ray's processes")
    fig.suptitle(f"bertrt on Ray Serve vs bertrt serve - {results['config']['models']}, {results['created']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    """Command line: run the benchmark, print the figures, write the JSON (and PNG)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models/minilm"))
    parser.add_argument("--texts", choices=("sentences", "queries"), default="sentences")
    parser.add_argument("--seconds", type=float, default=10.0, help="Timed seconds per measurement.")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    config = RayBenchConfig(
        models=args.models,
        texts=args.texts,
        seconds=args.seconds,
        warmup=args.warmup,
        rounds=args.rounds,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
    )
    results = run_ray_serve_bench(config, log=lambda line: print(line, file=sys.stderr))
    command = argv if argv is not None else sys.argv[1:]
    results["command"] = "python -m bertrt.bench.ray_serve_bench " + " ".join(command)
    print(json.dumps(results["figures"], indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.plot is not None:
        write_plot(results, args.plot)


if __name__ == "__main__":
    main()
