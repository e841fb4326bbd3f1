"""Soak test: serve many mixed requests from one loaded bundle; watch memory and latency.

A service runs for days, so what matters is what does *not* happen: resident memory must
stop growing once the first requests have sized every buffer, arena and cache, and tail
latency must not creep up. This script serves a seeded mix of embed, classify and QA
requests (short and window-filling texts, several scripts, blank texts, multi-window QA
contexts, and about one refused request in fifty), in windows of ``--window`` requests,
and prints per window the p50/p99 latency and the resident set size. It then checks:

* resident memory does not grow: the peak RSS of the later half of the windows is within
  ``--rss-limit`` (5%) of the peak of the earlier half. RSS is read after every request; a
  window's peak is the most it read. Between requests RSS swings with the arena policy (the
  MiniLM bundle: 430-526 MB within every stretch of a 20,000-request run), so RSS read once
  at two instants, after the first window and after the run, compares two phases of that
  swing rather than two sizes; that reading is still reported (``rss_end_change``);
* tail latency is stable: the median p99 of the later half of the windows is within
  ``--p99-limit`` (1.25x) of the median p99 of the earlier half (the first window, which
  pays for warm-up, is left out).

It exits 1 when a check fails or a request failed unexpectedly. Bounded in time by
``--max-seconds``. Smoke run on the tiny test bundle (CI)::

    python -m bertrt.bench.soak --models /tmp/tiny --requests 300 --window 100

The real run::

    python -m bertrt.bench.soak --models models/minilm --requests 20000

The request mix (:func:`mixed_requests`) and :func:`serve` are shared with the concurrency
test, which checks that 16 threads get exactly the sequential results.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bertrt import Bundle, InputError, RuntimeOptions
from bertrt.options import CPU_ARENA_MODES
from bertrt.types import Device, Task

# Words every test vocabulary knows (the tiny test bundle's too), so texts are real tokens.
WORDS = (
    "the", "a", "of", "to", "and", "in", "is", "was", "it", "that", "this", "for", "on", "with", "as", "by",
    "at", "from", "be", "are", "were", "i", "you", "he", "she", "they", "we", "his", "her", "their", "not",
    "no", "but", "or", "if", "so", "very", "good", "great", "bad", "love", "hate", "film", "movie", "plot",
    "actor", "actors", "story", "paris", "city", "france", "capital", "immune", "system", "body", "disease",
    "cells", "one", "two", "three", "first", "last", "new", "old", "year", "time",
)
# Other scripts and odd inputs: CJK, Arabic and Hebrew (right to left), emoji, control characters.
ODD_TEXTS = (
    "東京は日本の首都です",
    "مرحبا بالعالم",
    "שלום עולם",
    "emoji 😀🎉 and a heart ❤️",
    "control \x00\x07\x1b characters",
    "",
    "   \n\t ",
)
BAD_SHARE = 0.02


@dataclass(frozen=True)
class Request:
    """One call to a runner: its task, positional inputs and keyword options.

    ``refused`` marks a malformed request, which must fail with InputError (and leave the
    runner serving).
    """

    task: Task
    inputs: tuple[Any, ...]
    options: tuple[tuple[str, Any], ...] = ()
    refused: bool = False


def mixed_requests(count: int, seed: int = 0, max_words: int = 300) -> list[Request]:
    """``count`` seeded requests: ~40% classify, ~35% embed, ~25% QA, ~2% malformed.

    Most calls carry one text, some up to 8; texts run from one word to ``max_words``
    (past a 256-token window, so some truncate); QA contexts run from a sentence to
    ``3 * max_words`` words (several windows).
    """
    rng = random.Random(seed)
    makers = (_classify, _embed, _qa)
    requests = []
    for _ in range(count):
        if rng.random() < BAD_SHARE:
            requests.append(_malformed(rng))
        else:
            requests.append(rng.choices(makers, weights=(40, 35, 25))[0](rng, max_words))
    return requests


def serve(bundle: Bundle, request: Request) -> list[dict[str, Any]] | str:
    """Run ``request``; its results as JSON-ready dicts, or ``"InputError: ..."`` when it was
    refused as it should be. Any other failure raises."""
    runner = bundle.runner(request.task)
    try:
        results = runner(*request.inputs, **dict(request.options))  # type: ignore[operator]
    except InputError as exc:
        if request.refused:
            return f"InputError: {exc}"
        raise
    if request.refused:
        raise AssertionError(f"{request} should have been refused with InputError")
    return [result.to_dict() for result in results]


@dataclass
class Window:
    """Figures of one window of consecutive requests."""

    requests: int
    p50_ms: float
    p99_ms: float
    rss_mb: float  # after the window's last request
    peak_rss_mb: float = 0.0  # the most read after any request of the window


@dataclass
class SoakReport:
    """Every window's figures and the two verdicts."""

    windows: list[Window] = field(default_factory=list)
    refused: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    rss_growth: float = 0.0  # peak RSS, later half of the windows over the earlier half, less 1
    rss_end_change: float = 0.0  # RSS after the run over RSS after the first window, less 1
    p99_drift: float | None = None  # None: fewer than three windows
    rss_ok: bool = True
    p99_ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_soak(
    bundle: Bundle,
    requests: Sequence[Request],
    window: int = 1000,
    max_seconds: float = 3600.0,
    rss_limit: float = 0.05,
    p99_limit: float = 1.25,
    on_window: Callable[[int, Window], None] | None = None,
) -> SoakReport:
    """Serve ``requests`` one after another, in windows of ``window``; stop after ``max_seconds``.

    ``on_window(number, window)`` is called as each window completes (progress of long runs).
    """
    report = SoakReport()
    started = time.perf_counter()
    latencies: list[float] = []
    peak_mb = 0.0
    for index, request in enumerate(requests, start=1):
        t0 = time.perf_counter()
        outcome = serve(bundle, request)
        latencies.append(time.perf_counter() - t0)
        rss_mb = resident_mb()
        peak_mb = max(peak_mb, rss_mb)
        report.refused += isinstance(outcome, str)
        if index % window == 0 or index == len(requests):
            report.windows.append(_window(latencies, rss_mb, peak_mb))
            latencies, peak_mb = [], 0.0
            if on_window is not None:
                on_window(len(report.windows), report.windows[-1])
            if time.perf_counter() - started > max_seconds and index < len(requests):
                report.stopped_early = True
                break
    report.seconds = time.perf_counter() - started
    judge(report, rss_limit, p99_limit)
    return report


def judge(report: SoakReport, rss_limit: float, p99_limit: float) -> None:
    """Fill in ``report``'s memory and latency verdicts from its windows (module docstring)."""
    windows = report.windows
    first, last = windows[0], windows[-1]
    report.rss_end_change = (last.rss_mb - first.rss_mb) / first.rss_mb
    if len(windows) >= 2:
        half = len(windows) // 2
        earlier = max(w.peak_rss_mb for w in windows[:half])
        report.rss_growth = max(w.peak_rss_mb for w in windows[half:]) / earlier - 1.0
    report.rss_ok = report.rss_growth <= rss_limit
    steady = [w.p99_ms for w in report.windows[1:]]
    if len(steady) >= 2:
        half = len(steady) // 2
        report.p99_drift = statistics.median(steady[half:]) / statistics.median(steady[:half])
        report.p99_ok = report.p99_drift <= p99_limit


def _window(latencies: list[float], rss_mb: float, peak_rss_mb: float) -> Window:
    ordered = sorted(latencies)
    return Window(
        requests=len(ordered),
        p50_ms=1e3 * ordered[len(ordered) // 2],
        p99_ms=1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        rss_mb=rss_mb,
        peak_rss_mb=peak_rss_mb,
    )


def resident_mb() -> float:
    """This process's resident set size now, in MB (Linux); peak RSS elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


HEADER = f"{'window':>6}  {'requests':>8}  {'p50 ms':>8}  {'p99 ms':>8}  {'RSS MB':>8}  {'peak MB':>8}"


def window_line(number: int, w: Window) -> str:
    """One row of the table."""
    return (
        f"{number:>6}  {w.requests:>8}  {w.p50_ms:>8.2f}  {w.p99_ms:>8.2f}  {w.rss_mb:>8.1f}  {w.peak_rss_mb:>8.1f}"
    )


def render(report: SoakReport, rss_limit: float, p99_limit: float) -> str:
    """The per-window table and the verdicts, as printed."""
    lines = [HEADER, *(window_line(n, w) for n, w in enumerate(report.windows, start=1))]
    served = sum(w.requests for w in report.windows)
    lines += [
        f"{served} requests in {report.seconds:.0f} s ({report.refused} refused as expected)"
        + (" — stopped at --max-seconds" if report.stopped_early else ""),
        "peak RSS growth, later half of the windows over the earlier half: "
        f"{report.rss_growth:+.1%} (limit {rss_limit:.0%}) " + ("ok" if report.rss_ok else "FAILED"),
        f"RSS after the first window {report.windows[0].rss_mb:.1f} MB, after the run "
        f"{report.windows[-1].rss_mb:.1f} MB: {report.rss_end_change:+.1%} (two instants, not judged)",
        "p99 drift, later half of the windows over the earlier half: "
        + (
            f"{report.p99_drift:.2f}x (limit {p99_limit:.2f}x) " + ("ok" if report.p99_ok else "FAILED")
            if report.p99_drift is not None
            else "n/a (needs three windows)"
        ),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bertrt.bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models/minilm"), help="bundle folder")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=1000, help="requests per measured window")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop after this long")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime picks)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--cpu-arena",
        choices=CPU_ARENA_MODES,
        default=RuntimeOptions().cpu_arena,
        help="ONNX Runtime's CPU memory arena: adaptive (the runtime's default), shrunk after each run, kept, "
        "or off",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-words", type=int, default=300, help="longest text of the mix, in words")
    parser.add_argument("--rss-limit", type=float, default=0.05)
    parser.add_argument("--p99-limit", type=float, default=1.25)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--progress", action="store_true", help="print each window on stderr as it ends")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.window < 1:
        parser.error("--requests and --window must be 1 or more")
    options = RuntimeOptions(intra_op_threads=args.threads, cpu_arena=args.cpu_arena)
    bundle = Bundle(args.models, device=Device.CPU, precision=args.precision, options=options)
    bundle.load_all()
    progress = None
    if args.progress:
        print(HEADER, file=sys.stderr, flush=True)

        def progress(number: int, window: Window) -> None:
            print(window_line(number, window), file=sys.stderr, flush=True)

    report = run_soak(
        bundle,
        mixed_requests(args.requests, args.seed, args.max_words),
        args.window,
        args.max_seconds,
        args.rss_limit,
        args.p99_limit,
        progress,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else render(report, args.rss_limit, args.p99_limit))
    return 0 if report.rss_ok and report.p99_ok else 1


# --- the request mix ----------------------------------------------------------------------


def _text(rng: random.Random, max_words: int) -> str:
    roll = rng.random()
    if roll < 0.08:
        return rng.choice(ODD_TEXTS)
    # Mostly short texts (a heavy tail from a Pareto draw), and 5% that fill or overflow the window.
    short = min(max_words, int(rng.paretovariate(1.2) * 4))
    words = short if roll < 0.95 else rng.randint(max_words // 2, max_words)
    return " ".join(rng.choices(WORDS, k=max(1, words)))


def _texts(rng: random.Random, max_words: int) -> list[str]:
    # Most service calls carry one text; some carry a small batch.
    return [_text(rng, max_words) for _ in range(rng.choice((1, 1, 1, 1, 2, 3, 4, 8)))]


def _classify(rng: random.Random, max_words: int) -> Request:
    return Request(Task.CLASSIFY, (_texts(rng, max_words),), (("top_k", rng.choice((1, 2))),))


def _embed(rng: random.Random, max_words: int) -> Request:
    options = (
        ("pooling", rng.choice(("cls", "mean"))),
        ("normalize", rng.random() < 0.5),
        ("token_embeddings", rng.random() < 0.1),
    )
    return Request(Task.EMBED, (_texts(rng, max_words),), options)


def _qa(rng: random.Random, max_words: int) -> Request:
    pairs = 1 if rng.random() < 0.8 else 2
    questions = [" ".join(rng.choices(WORDS, k=rng.randint(2, 8))) + "?" for _ in range(pairs)]
    # Contexts of a paragraph or so; one in ten runs over several windows.
    longest = 3 * max_words if rng.random() < 0.1 else max_words
    contexts = [" ".join(rng.choices(WORDS, k=rng.randint(10, longest))) for _ in range(pairs)]
    options = (("top_k", rng.randint(1, 3)), ("max_answer_length", rng.choice((15, 30))))
    return Request(Task.QA, (questions, contexts), options)


def _malformed(rng: random.Random) -> Request:
    return rng.choice(
        (
            Request(Task.CLASSIFY, (["fine", None],), refused=True),
            Request(Task.EMBED, (b"bytes",), refused=True),
            Request(Task.CLASSIFY, (["fine"],), (("top_k", 0),), refused=True),
            Request(Task.QA, (["   "], ["the city is paris"]), refused=True),
            Request(Task.QA, (["where?"], [""]), refused=True),
            Request(Task.QA, (["where?"], ["paris"]), (("top_k", 10**9),), refused=True),
        )
    )


if __name__ == "__main__":
    sys.exit(main())
