"""What each ``RuntimeOptions.cpu_arena`` mode costs in speed and leaves in memory.

For every mode (``adaptive``, ``shrink``, ``keep``, ``off``), a fresh process loads the
bundle's fp32 classifier and measures: one 128-token request (p50 of 40), a stream of 64
mixed reviews and sentences served in one call (best of 3), one forward of 32 x 256 tokens
(median of 6), and its resident memory right after the stream (``rss_after_stream_mb``)
and once it has been idle for ``IDLE_SHRINK_S`` + 1 s (``rss_idle_mb``: the idle footprint
after large requests, which is what a service holds between bursts). Modes alternate over
``--rounds`` rounds, so a change in background load hits all of them alike. The
process-wide allocator settings (glibc's threshold, the arena) are why each measurement
needs its own process.

The batches run whole (``cpu_chunk_tokens=0``), as the runtime ran them before row chunks
and as the figures of benchmarks/README.md were measured; ``--chunk-tokens 1024`` measures
every mode with the runtime's default instead.

    python -m bertrt.bench.arena --models models/minilm --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = ("adaptive", "shrink", "keep", "off")


def measure(models: Path, mode: str, threads: int, chunk_tokens: int = 0) -> dict[str, Any]:
    """One mode's figures, measured in this process (call it in a fresh one)."""
    from bertrt.bench import workloads

    import bertrt
    from bertrt.memory import IDLE_SHRINK_S

    options = bertrt.RuntimeOptions(
        intra_op_threads=threads, inter_op_threads=1, cpu_arena=mode, cpu_chunk_tokens=chunk_tokens
    )
    classifier = bertrt.load(models, device="cpu", options=options).classifier
    text = workloads.w1_texts(workloads.load_tokenizer(models / "classifier"), 128)["long"]
    stream = workloads.mixed_stream(64, seed=0)
    vocab_size = json.loads((models / "classifier" / "config.json").read_text())["vocab_size"]
    feeds = workloads.token_batch(32, 256, vocab_size, seed=0)
    for _ in range(5):
        classifier([text])
    single = [_seconds(lambda: classifier([text])) for _ in range(40)]
    classifier(stream)
    streams = [_seconds(lambda: classifier(stream)) for _ in range(3)]
    rss_after_stream = _rss_mb()
    time.sleep(IDLE_SHRINK_S + 1)
    rss_idle = _rss_mb()
    classifier.session.run(feeds)
    forwards = [_seconds(lambda: classifier.session.run(feeds)) for _ in range(6)]
    return {
        "mode": mode,
        "chunk_tokens": chunk_tokens,
        "request_128_p50_ms": round(statistics.median(single) * 1e3, 1),
        "stream_64_best_s": round(min(streams), 2),
        "rss_after_stream_mb": rss_after_stream,
        "rss_idle_mb": rss_idle,
        "forward_32x256_median_ms": round(statistics.median(forwards) * 1e3),
    }


def _seconds(call: Any) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return -1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertrt.bench.arena", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models/minilm"), help="bundle folder")
    parser.add_argument("--rounds", type=int, default=2, help="times every mode is measured")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument(
        "--chunk-tokens", type=int, default=0, help="RuntimeOptions.cpu_chunk_tokens (default 0: whole batches)"
    )
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.chunk_tokens < 0:
        parser.error("--chunk-tokens must be 0 (whole batches) or more.")
    if args.child:
        print(json.dumps(measure(args.models, args.child, args.threads, args.chunk_tokens)))
        return 0
    for _ in range(args.rounds):
        for mode in MODES:
            command = [sys.executable, "-m", "bertrt.bench.arena", "--child", mode]
            command += ["--models", str(args.models), "--threads", str(args.threads)]
            command += ["--chunk-tokens", str(args.chunk_tokens)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines() or ["(no message)"]
                print(f"cpu_arena={mode} failed: {lines[-1]}", file=sys.stderr)
                return 1
            print(done.stdout.strip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
