"""Many threads on one loaded bundle, and the soak script in its smoke mode.

16 client threads send mixed embed, classify and QA requests (malformed ones included) to
one bundle, with IO binding and with plain runs; every result must equal the sequential
run's exactly, and a runner first used from many threads at once is loaded once. The count per thread is
small in CI; ``BERTRT_CONCURRENCY_REQUESTS=500`` runs the full check (8,000 requests), and
``BERTRT_CONCURRENCY_BUNDLE=models/minilm`` runs it on a real bundle instead of the tiny one.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from bertrt.bench.soak import SoakReport, Window, judge, main, mixed_requests, run_soak, serve

import bertrt
from bertrt import RuntimeOptions

THREADS = 16
REQUESTS_PER_THREAD = int(os.environ.get("BERTRT_CONCURRENCY_REQUESTS", "30"))
BUNDLE = os.environ.get("BERTRT_CONCURRENCY_BUNDLE")
pytestmark = pytest.mark.filterwarnings("ignore:The (qa|classify) head")


@pytest.fixture(scope="module", params=[True, False], ids=["io-binding", "plain-run"])
def bundle(tiny_bundle: Path, request: pytest.FixtureRequest) -> bertrt.Bundle:
    """The bundle, with IO binding (per-thread bindings and buffers) and with plain runs."""
    # Batches of 4: most requests run several batches of different widths, so per-thread
    # buffers grow and are reused while other threads run.
    options = RuntimeOptions(batch_size=4, io_binding=request.param)
    return bertrt.load(BUNDLE or tiny_bundle, device="cpu", options=options).load_all()


@pytest.mark.usefixtures("frequent_switches")
def test_sixteen_threads_get_exactly_the_sequential_results(bundle: bertrt.Bundle, concurrently: Any) -> None:
    pool = mixed_requests(64, seed=1, max_words=100)
    expected = [serve(bundle, request) for request in pool]
    assert any(isinstance(e, str) for e in expected) and any(isinstance(e, list) for e in expected)
    mismatches: list[tuple[int, int]] = []
    served = [0] * THREADS

    def client(number: int) -> None:
        rng = random.Random(number)
        for _ in range(REQUESTS_PER_THREAD):
            index = rng.randrange(len(pool))
            if serve(bundle, pool[index]) != expected[index]:
                mismatches.append((number, index))
            served[number] += 1

    concurrently(client, THREADS)
    assert mismatches == []
    assert served == [REQUESTS_PER_THREAD] * THREADS


def test_first_use_from_many_threads_loads_each_runner_once(tiny_bundle: Path, concurrently: Any) -> None:
    bundle = bertrt.load(tiny_bundle, device="cpu")
    seen: list[int] = []
    concurrently(lambda _: seen.append(id(bundle.classifier)), THREADS)
    assert len(seen) == THREADS and len(set(seen)) == 1


def test_the_request_mix_covers_every_task_and_refusals() -> None:
    requests = mixed_requests(400, seed=0)
    assert requests == mixed_requests(400, seed=0)  # seeded: every run serves the same mix
    assert {r.task.value for r in requests} == {"embed", "classify", "qa"}
    assert 0 < sum(r.refused for r in requests) < 40


def test_soak_smoke_run(bundle: bertrt.Bundle) -> None:
    requests = mixed_requests(300, seed=2, max_words=100)
    report = run_soak(bundle, requests, window=100)
    assert [w.requests for w in report.windows] == [100, 100, 100]
    assert report.refused == sum(r.refused for r in requests) > 0
    assert all(0 < w.p50_ms <= w.p99_ms and 0 < w.rss_mb <= w.peak_rss_mb for w in report.windows)
    assert report.rss_growth < 0.25  # a real leak of this run's inputs would show here


def test_soak_judges_growth_by_the_peaks_of_each_half_not_by_two_instants() -> None:
    def judged(peaks: list[float], ends: list[float]) -> SoakReport:
        report = SoakReport(windows=[Window(100, 1.0, 2.0, end, peak) for end, peak in zip(ends, peaks)])
        judge(report, rss_limit=0.05, p99_limit=1.25)
        return report

    # A swing with no trend whose last reading lands at its top: two instants read +20%.
    swing = judged(peaks=[120, 120, 120, 120], ends=[100, 110, 105, 120])
    assert swing.rss_end_change == pytest.approx(0.2)
    assert swing.rss_growth == pytest.approx(0.0) and swing.rss_ok
    # A rising envelope fails even when the last reading happens to be low.
    leak = judged(peaks=[100, 102, 110, 112], ends=[100, 101, 109, 98])
    assert leak.rss_growth == pytest.approx(112 / 102 - 1) and not leak.rss_ok and leak.rss_end_change < 0


def test_soak_command_prints_its_figures(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--models", str(tiny_bundle), "--requests", "200", "--window", "100", "--threads", "1"]
    # Latency limits are for the real run; on shared CI cores only the output is checked.
    code = main([*args, "--p99-limit", "100", "--rss-limit", "1", "--json"])
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert code == 0 and len(report["windows"]) == 2 and report["rss_ok"] and report["p99_ok"]
    main(args)
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["window", "requests", "p50", "ms", "p99", "ms", "RSS", "MB", "peak", "MB"]
    assert "peak RSS growth" in table and "RSS after the first window" in table and "p99 drift" in table
