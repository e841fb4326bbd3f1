"""Memory handed back after requests: ONNX Runtime's CPU arena shrunk by policy, glibc's
threshold pinned."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bertrt
from bertrt import RuntimeOptions, memory
from bertrt.errors import ConfigError
from bertrt.memory import ArenaPolicy
from bertrt.providers import ARENA_SHRINKAGE, run_options, session_options
from bertrt.session import OrtSession
from bertrt.types import Device


def test_run_options_shrink_the_cpu_arena_only_when_asked() -> None:
    assert run_options(shrink=True).get_run_config_entry(ARENA_SHRINKAGE) == "cpu:0"
    with pytest.raises(RuntimeError):  # ONNX Runtime's way of saying the entry is not set
        run_options(shrink=False).get_run_config_entry(ARENA_SHRINKAGE)
    assert RuntimeOptions().cpu_arena == "adaptive"
    for mode in ("adaptive", "shrink", "keep"):
        assert session_options(RuntimeOptions(cpu_arena=mode)).enable_cpu_mem_arena is True
    assert session_options(RuntimeOptions(cpu_arena="off")).enable_cpu_mem_arena is False
    with pytest.raises(ConfigError, match="cpu_arena must be one of adaptive, shrink, keep, off"):
        RuntimeOptions(cpu_arena="sometimes")


def policy(idle_s: float = 60.0, shrunk: list[float] | None = None) -> ArenaPolicy:
    return ArenaPolicy(lambda: (shrunk if shrunk is not None else []).append(time.monotonic()), 100, idle_s)


def runs(arena: ArenaPolicy, sizes: list[int]) -> list[bool]:
    """Which of consecutive runs of these token counts shrink the arena when they end."""
    decisions = []
    for tokens in sizes:
        decisions.append(arena.before_run(tokens))
        arena.after_run()
    return decisions


def test_only_small_runs_with_nothing_remembered_skip_the_policy() -> None:
    """A settled run skips before_run/after_run; every decision a skipped run would have
    made is 'keep, change nothing', so skipping changes no later decision."""
    arena = policy()
    assert arena.settled(10) and not arena.settled(500)
    runs(arena, [500])  # a large run is remembered ...
    assert not arena.settled(10)
    runs(arena, [500, 10])  # ... kept by the next large run, and the small run after it shrinks
    assert arena.settled(10)
    settled = policy()
    # Skipping the settled runs gives the same decisions as calling the policy for every run.
    sizes = [10, 10, 500, 10, 10, 500, 500, 10, 10]
    skipped = [False if settled.settled(n) else runs(settled, [n])[0] for n in sizes]
    assert skipped == runs(policy(), sizes)


def test_small_runs_keep_the_arena() -> None:
    arena = policy()
    assert runs(arena, [1, 50, 100, 7]) == [False] * 4
    assert not arena.holds_large_run


def test_an_isolated_large_run_hands_its_memory_back() -> None:
    arena = policy()
    assert runs(arena, [10, 5000, 10, 101, 10]) == [False, True, False, True, False]
    assert not arena.holds_large_run


def test_a_stream_of_large_runs_keeps_the_arena_until_traffic_turns_small() -> None:
    arena = policy()
    # The first large run after small ones cannot know a stream follows; the rest keep.
    assert runs(arena, [10, 8192, 8192, 4096, 8192]) == [False, True, False, False, False]
    assert arena.holds_large_run
    assert runs(arena, [10, 10]) == [True, False]
    assert not arena.holds_large_run


def test_kept_memory_is_handed_back_after_an_idle_period() -> None:
    shrunk: list[float] = []
    arena = policy(idle_s=0.2, shrunk=shrunk)
    started = time.monotonic()
    runs(arena, [5000, 5000])
    deadline = started + 5
    while not shrunk and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(shrunk) == 1 and shrunk[0] - started >= 0.2
    assert not arena.holds_large_run
    # A large run after the idle hand-back is the stream resuming: it keeps what it takes,
    # and that is handed back once idle again.
    assert runs(arena, [5000, 5000]) == [False, False]
    assert arena.holds_large_run
    while len(shrunk) < 2 and time.monotonic() < deadline + 5:
        time.sleep(0.02)
    assert len(shrunk) == 2 and not arena.holds_large_run
    # A small run after it ends the stream: the next large run is an isolated one again.
    assert runs(arena, [10, 5000]) == [False, True]


def test_no_idle_shrink_while_runs_keep_coming_or_one_is_in_flight() -> None:
    shrunk: list[float] = []
    arena = policy(idle_s=0.3, shrunk=shrunk)
    runs(arena, [5000])
    for _ in range(8):  # a steady stream of large runs, 0.1 s apart: never idle for 0.3 s
        runs(arena, [5000])
        time.sleep(0.1)
    assert shrunk == []
    arena.before_run(5000)  # a long run in flight is not idleness
    time.sleep(0.6)
    assert shrunk == []
    arena.after_run()
    time.sleep(0.6)
    assert len(shrunk) == 1


def test_concurrent_runs_keep_the_policy_consistent() -> None:
    arena = policy(idle_s=0.05)

    def work(offset: int) -> None:
        for i in range(300):
            arena.before_run(5000 if (i + offset) % 3 else 10)
            arena.after_run()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert arena._in_flight == 0
    time.sleep(0.3)
    assert not arena.holds_large_run  # the idle check handed back whatever the last runs kept


def test_the_idle_shrink_is_a_real_run_of_the_session(tiny_bundle: Path) -> None:
    model = tiny_bundle / "embedder" / "model.onnx"
    session = OrtSession(model, Device.CPU)
    assert session.arena_policy is not None
    session._shrink_arena()  # a 1-token run with the shrink option; it must not raise
    assert OrtSession(model, Device.CPU, RuntimeOptions(cpu_arena="keep")).arena_policy is None


def test_every_arena_mode_gives_the_same_outputs(tiny_bundle: Path) -> None:
    texts = ["a short one", "a much longer text " * 20]
    results = {}
    for mode in ("adaptive", "shrink", "keep", "off"):
        bundle = bertrt.load(tiny_bundle, device="cpu", options=RuntimeOptions(cpu_arena=mode))
        results[mode] = [r.vector for r in bundle.embedder(texts, pooling="mean")]
    for mode in ("shrink", "keep", "off"):
        np.testing.assert_array_equal(np.stack(results[mode]), np.stack(results["adaptive"]))


def test_an_explicit_glibc_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(memory.MMAP_THRESHOLD_ENV, "65536")
    assert memory._mallopt(memory.M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_large_freed_blocks_leave_the_process() -> None:
    # glibc alone keeps freed 8 MB blocks in its heap once the first one has raised its
    # threshold (small blocks after them keep the heap's top from being trimmed); pinned,
    # every such block is unmapped on free. Fresh processes: the setting is process-wide.
    program = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from bertrt import memory\n"
        "if sys.argv[1] == 'pinned': assert memory.pin_mmap_threshold()\n"
        "def rss(): return int(Path('/proc/self/statm').read_text().split()[1]) * 4096\n"
        "np.ones(8 << 20, np.uint8)\n"
        "before = rss()\n"
        "blocks, separators = [], []\n"
        "for _ in range(4):\n"
        "    blocks.append(np.ones(8 << 20, np.uint8))\n"
        "    separators.append(np.ones(200_000, np.uint8))\n"
        "del blocks\n"
        "print(rss() - before)\n"
    )

    def growth(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", program, mode], capture_output=True, text=True, check=True)
        return int(done.stdout)

    grown = {mode: growth(mode) for mode in ("default", "pinned")}
    assert grown["pinned"] < 8 << 20 < 24 << 20 < grown["default"]


def test_arena_benchmark_measures_every_mode(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bertrt.bench import arena

    argv = ["--models", str(tiny_bundle), "--rounds", "1", "--threads", "1", "--chunk-tokens", "64"]
    assert arena.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["mode"] for r in rows] == ["adaptive", "shrink", "keep", "off"]
    for row in rows:
        assert row["chunk_tokens"] == 64
        assert row["request_128_p50_ms"] > 0 and row["stream_64_best_s"] > 0
        assert row["forward_32x256_median_ms"] >= 0 and row["rss_after_stream_mb"] > 0 and row["rss_idle_mb"] > 0


def test_overhead_benchmark_times_every_part_against_plain_onnx_runtime(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from bertrt.bench import overhead
    from bertrt.bench.subjects import bundle_models

    out = tmp_path / "overhead.json"
    argv = ["--models", str(tiny_bundle), "--rounds", "1", "--per-turn", "2", "--forward-seconds", "0.1"]
    assert overhead.main([*argv, "--threads", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert "w1.classify.short" in results["figures"] and "forward.32x64" in results["figures"]
    for figure in results["figures"].values():
        assert set(figure) == {"ort", "ort-twin", "ort-shared", "before", "arena", "plain-run", "after"}
        assert figure["ort"]["vs_ort"] == 1.0 and figure["ort"]["vs_ort_by_round"] == 1.0
        assert figure["ort-shared"]["vs_shared"] == 1.0 and figure["after"]["vs_shared_by_round"] > 0
        assert all(s["p50_ms"] > 0 and s["calls"] == 2 and s["vs_ort_by_round"] > 0 for s in figure.values())
    assert results["python_us"]["w1.classify.short"]["bertrt"] > 0
    assert "| forward.32x64 |" in capsys.readouterr().out
    # The paired measurement alone: bertrt and a plain loop on bertrt's own session.
    assert overhead.main(["--models", str(tiny_bundle), "--threads", "1", "--pairs", "8", "--paired-only"]) == 0
    printed = capsys.readouterr().out
    assert "w1.embed.long" in printed and "| forward" not in printed
    with pytest.raises(SystemExit):
        overhead.main(["--models", str(tiny_bundle), "--paired-only"])  # no pairs asked for
    paired = overhead.measure_pairs(tiny_bundle, threads=1, pairs=4)["paired"]
    w1 = {f"w1.{op}.{length}" for op in ("classify", "embed") for length in ("short", "long")}
    shapes = overhead._forward_shapes(bundle_models(tiny_bundle))
    assert set(paired) == w1 | {f"forward.{batch}x{seq}" for batch, seq in shapes}
    assert all(paired[name]["pairs"] >= overhead.FORWARD_PAIRS_MIN for name in set(paired) - w1)
    assert paired["w1.classify.short"]["pairs"] == 4 and paired["w1.classify.long"]["pairs"] == 1
    assert all(p["bertrt_ms"] > 0 and p["plain_ms"] > 0 and p["vs_plain"] > 0 for p in paired.values())
