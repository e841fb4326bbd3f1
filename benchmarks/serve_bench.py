"""Serving benchmark: ``bertrt serve`` under many concurrent clients, with and without
dynamic batching.

Each mode starts a real ``bertrt serve`` process on a free loopback port; ``clients``
coroutines (one keep-alive HTTP/1.1 connection each) then send single-text requests back
to back for ``seconds``, after a warm-up. Modes differ only in batching: ``batched`` merges
concurrent requests (``--max-batch-size``/``--max-wait-ms``), ``unbatched`` runs each
request alone (``--max-batch-size 1``). Rounds alternate the modes, so load from other
processes on the machine hits both alike; the load average is recorded around every run.

The load generator writes raw HTTP on asyncio streams instead of using an HTTP client
library: on a small machine the clients share the CPU with the server, and a light client
leaves more of it to the system under test.

Example::

    python -m bertrt.bench.serve_bench --models models/minilm --seconds 10 --rounds 2 \\
        --out benchmarks/results/serve-classify.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from bertrt.bench.machine import load_average, machine_info
from bertrt.bench.workloads import ROTTEN_TOMATOES, sentiment_csv

# Request path and JSON body of one single-text request, per task.
ENDPOINTS = {"classify": ("/classify", "texts"), "embed": ("/embed", "texts"), "openai": ("/v1/embeddings", "input")}
# The target: batching must multiply throughput by 3 or more, at a p99 at most twice
# the unbatched one.
TARGET_THROUGHPUT_RATIO = 3.0
TARGET_P99_RATIO = 2.0


@dataclass(frozen=True)
class ServeBenchConfig:
    """One benchmark run; ``server_args`` go to every ``bertrt serve`` process."""

    models: Path
    task: str = "classify"
    texts: str = "sentences"
    clients: int = 32
    seconds: float = 10.0
    warmup: float = 3.0
    rounds: int = 2
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    server_args: tuple[str, ...] = ("--device", "cpu")
    n_texts: int = 2000
    seed: int = 0
    model_costs: bool = True

    def modes(self) -> dict[str, list[str]]:
        """Each mode's batching flags."""
        batched = ["--max-batch-size", str(self.max_batch_size), "--max-wait-ms", str(self.max_wait_ms)]
        return {"batched": batched, "unbatched": ["--max-batch-size", "1", "--max-wait-ms", "0"]}


@dataclass
class RunResult:
    """One mode's requests in one round: latencies (s) of those timed, errors, window length."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    window_s: float = 0.0
    load_before: tuple[float, float, float] | None = None
    load_after: tuple[float, float, float] | None = None
    server_cpu_s: float | None = None
    batch_sizes: dict[str, float] = field(default_factory=dict)


def run_serve_bench(config: ServeBenchConfig, log: Any = print) -> dict[str, Any]:
    """Run every mode for ``rounds`` alternating rounds; the results dict (see the README)."""
    bodies = request_bodies(config)
    runs: dict[str, list[RunResult]] = {mode: [] for mode in config.modes()}
    for round_number in range(config.rounds):
        for mode, flags in config.modes().items():
            log(f"round {round_number + 1}/{config.rounds}: {mode} ({config.seconds:g} s, {config.clients} clients)")
            result = measure_mode(config, [*config.server_args, *flags], bodies)
            runs[mode].append(result)
            log(f"  {summarize([result])}")
    figures = {mode: summarize(results) for mode, results in runs.items()}
    batched, unbatched = figures["batched"], figures["unbatched"]
    ratios = {
        "throughput": batched["throughput_rps"] / unbatched["throughput_rps"],
        "p50": batched["p50_ms"] / unbatched["p50_ms"],
        "p99": batched["p99_ms"] / unbatched["p99_ms"],
    }
    if batched.get("server_cpu_ms_per_request") and unbatched.get("server_cpu_ms_per_request"):
        # Less CPU per request is what raises throughput once the cores are the limit.
        ratios["cpu_per_request"] = batched["server_cpu_ms_per_request"] / unbatched["server_cpu_ms_per_request"]
    return {
        "benchmark": "serve",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {**asdict(config), "models": str(config.models), "modes": config.modes()},
        "figures": figures,
        "ratios": ratios,
        "target": {
            "throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
            "p99_ratio_max": TARGET_P99_RATIO,
            "met": ratios["throughput"] >= TARGET_THROUGHPUT_RATIO and ratios["p99"] <= TARGET_P99_RATIO,
        },
        "load_average": {
            mode: [{"before": r.load_before, "after": r.load_after} for r in results] for mode, results in runs.items()
        },
        "model_cpu_ms_per_text": model_costs(config.models, config.task) if config.model_costs else None,
    }


def model_costs(models: Path, task: str, seconds: float = 1.0) -> dict[str, dict[str, float]]:
    """CPU milliseconds per text of the bare runner (one intra-op thread, no HTTP) for
    texts of equal length at batch 1, 8 and 32: the most batching can save on this machine,
    before padding and HTTP costs. CPU time, unlike wall time, hardly moves when other
    processes share the cores."""
    import bertrt

    options = bertrt.RuntimeOptions(intra_op_threads=1, inter_op_threads=1, batch_size=64)
    bundle = bertrt.load(models, device="cpu", options=options)
    runner: Any = bundle.classifier if task == "classify" else bundle.embedder
    words = ("the film is a sweet and funny story about love and loss and the people we meet " * 4).split()
    costs: dict[str, dict[str, float]] = {}
    for n_words in (3, 10, 20, 40):
        text = " ".join(words[:n_words])
        per_batch = {}
        for batch in (1, 8, 32):
            runner([text] * batch)  # warm-up: buffers of this shape
            started, texts = time.process_time(), 0
            while time.process_time() - started < seconds:
                runner([text] * batch)
                texts += batch
            per_batch[f"batch_{batch}"] = round(1000 * (time.process_time() - started) / texts, 3)
        per_batch["batch_1_over_best"] = round(per_batch["batch_1"] / min(per_batch.values()), 2)
        costs[f"{len(runner.tokenizer.encode([text])[0])}_tokens"] = per_batch
    return costs


def request_bodies(config: ServeBenchConfig) -> list[bytes]:
    """One request body per text: ``n_texts`` Rotten Tomatoes sentences (seeded sample;
    ~28 tokens on average), or with ``texts="queries"`` the first 3 to 8 words of each
    (search-query length, ~8 tokens)."""
    with open(sentiment_csv(), encoding="utf-8", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle) if row.get("source") == ROTTEN_TOMATOES]
    rng = np.random.default_rng(config.seed)
    picked = [texts[i] for i in rng.choice(len(texts), size=min(config.n_texts, len(texts)), replace=False)]
    if config.texts == "queries":
        picked = [" ".join(text.split()[: rng.integers(3, 9)]) for text in picked]
    _, field_name = ENDPOINTS[config.task]
    return [json.dumps({field_name: text}).encode() for text in picked]


def measure_mode(config: ServeBenchConfig, server_args: list[str], bodies: list[bytes]) -> RunResult:
    """Start a server with ``server_args``, load it with the clients, and stop it."""
    with running_server(config.models, server_args) as (port, pid):
        result = RunResult(load_before=load_average())
        path, _ = ENDPOINTS[config.task]
        asyncio.run(drive(port, pid, path, bodies, config, result))
        result.load_after = load_average()
        result.batch_sizes = batch_size_stats(scrape_metrics(port), "embed" if config.task == "openai" else config.task)
    return result


@contextlib.contextmanager
def running_server(models: Path, args: list[str], timeout: float = 120.0) -> Iterator[tuple[int, int]]:
    """A ``bertrt serve`` process on a free loopback port, ready; yields its port and pid."""
    port = free_port()
    command = [sys.executable, "-m", "bertrt", "serve", "--models", str(models), "--port", str(port), *args]
    with tempfile.TemporaryFile() as server_log:
        process = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT)
        try:
            wait_ready(port, process, timeout)
            yield port, process.pid
        except BaseException:
            server_log.seek(0)
            sys.stderr.write(server_log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``GET /health`` until 200; fail if the server exits or takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bertrt serve exited with status {process.returncode} before it was ready.")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"bertrt serve was not ready after {timeout} s.")


async def drive(
    port: int, pid: int, path: str, bodies: list[bytes], config: ServeBenchConfig, result: RunResult
) -> None:
    """Run ``clients`` closed-loop clients; time the requests sent after the warm-up and
    the server's CPU time over the same window."""
    started = time.perf_counter()
    timed_from = started + config.warmup
    stop_at = timed_from + config.seconds
    step = max(1, len(bodies) // config.clients)
    clients = [client(port, path, bodies, i * step, timed_from, stop_at, result) for i in range(config.clients)]
    cpu = await asyncio.gather(process_cpu_between(pid, timed_from, stop_at), *clients)
    result.server_cpu_s = cpu[0]
    result.window_s = config.seconds


async def process_cpu_between(pid: int, start: float, stop: float) -> float | None:
    """CPU seconds (user + system, all threads) process ``pid`` used between two
    ``perf_counter`` instants; None where ``/proc`` is missing. Unlike wall time, it hardly
    moves when other processes share the cores."""
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    before = process_cpu_seconds(pid)
    await asyncio.sleep(max(0.0, stop - time.perf_counter()))
    after = process_cpu_seconds(pid)
    return None if before is None or after is None else after - before


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far, from ``/proc/PID/stat``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def client(
    port: int, path: str, bodies: list[bytes], offset: int, timed_from: float, stop_at: float, result: RunResult
) -> None:
    """One client: a keep-alive connection sending one request at a time until ``stop_at``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
    try:
        n = offset
        while (sent := time.perf_counter()) < stop_at:
            body = bodies[n % len(bodies)]
            n += 1
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            status = await read_response(reader)
            done = time.perf_counter()
            if sent >= timed_from and done <= stop_at:
                if status == 200:
                    result.latencies.append(done - sent)
                else:
                    result.errors += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length body; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if length is None:
        raise RuntimeError("The server answered without Content-Length; the load generator needs it.")
    await reader.readexactly(int(length.group(1)))
    return status


def scrape_metrics(port: int) -> str:
    """The server's ``GET /metrics`` text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def batch_size_stats(metrics: str, task: str) -> dict[str, float]:
    """Model runs and mean texts per run for ``task``, from the server's histograms."""

    def sample(name: str) -> float:
        match = re.search(rf'^{name}{{task="{task}"}} (\S+)$', metrics, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    runs = sample("bertrt_batch_size_count")
    return {"runs": runs, "mean_texts_per_run": sample("bertrt_batch_size_sum") / runs if runs else 0.0}


def summarize(results: list[RunResult]) -> dict[str, Any]:
    """Throughput and latency percentiles over all rounds of one mode."""
    latencies = np.array([x for r in results for x in r.latencies]) * 1000
    window = sum(r.window_s for r in results)
    runs = sum(r.batch_sizes.get("runs", 0.0) for r in results)
    texts = sum(r.batch_sizes.get("runs", 0.0) * r.batch_sizes.get("mean_texts_per_run", 0.0) for r in results)
    cpu = [r.server_cpu_s for r in results]
    cpu_ms = (
        1000 * sum(c for c in cpu if c is not None) / latencies.size if None not in cpu and latencies.size else None
    )
    if latencies.size == 0:
        return {"requests": 0, "errors": sum(r.errors for r in results), "throughput_rps": 0.0}
    return {
        "requests": int(latencies.size),
        "errors": sum(r.errors for r in results),
        "throughput_rps": round(latencies.size / window, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p90_ms": round(float(np.percentile(latencies, 90)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "mean_ms": round(float(latencies.mean()), 2),
        "mean_texts_per_run": round(texts / runs, 2) if runs else None,
        "server_cpu_ms_per_request": round(cpu_ms, 2) if cpu_ms is not None else None,
    }


def main(argv: list[str] | None = None) -> None:
    """Command line: run the benchmark, print a summary, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models/minilm"))
    parser.add_argument("--task", choices=sorted(ENDPOINTS), default="classify")
    parser.add_argument("--texts", choices=("sentences", "queries"), default="sentences")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="Timed seconds per mode and round.")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--server-arg", action="append", default=None, help="Extra `bertrt serve` argument.")
    parser.add_argument(
        "--no-model-costs", action="store_true", help="Skip the in-process CPU cost per text at batch 1/8/32."
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    config = ServeBenchConfig(
        models=args.models,
        task=args.task,
        texts=args.texts,
        clients=args.clients,
        seconds=args.seconds,
        warmup=args.warmup,
        rounds=args.rounds,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        server_args=("--device", "cpu", *(args.server_arg or ())),
        model_costs=not args.no_model_costs,
    )
    results = run_serve_bench(config, log=lambda line: print(line, file=sys.stderr))
    results["command"] = "python -m bertrt.bench.serve_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    print(
        json.dumps({"figures": results["figures"], "ratios": results["ratios"], "target": results["target"]}, indent=2)
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
