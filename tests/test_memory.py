"""Memory handed back after requests: ONNX Runtime's CPU arena shrunk after each run, glibc's
threshold pinned."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bertrt
from bertrt import RuntimeOptions, memory
from bertrt.errors import ConfigError
from bertrt.providers import run_options, session_options


def test_the_cpu_arena_is_shrunk_after_each_run_unless_kept_or_off() -> None:
    shrink = "memory.enable_memory_arena_shrinkage"
    assert session_options(RuntimeOptions()).enable_cpu_mem_arena is True
    assert run_options(RuntimeOptions()).get_run_config_entry(shrink) == "cpu:0"
    assert session_options(RuntimeOptions(cpu_arena="keep")).enable_cpu_mem_arena is True
    assert session_options(RuntimeOptions(cpu_arena="off")).enable_cpu_mem_arena is False
    for mode in ("keep", "off"):
        with pytest.raises(RuntimeError):  # ONNX Runtime's way of saying the entry is not set
            run_options(RuntimeOptions(cpu_arena=mode)).get_run_config_entry(shrink)
    with pytest.raises(ConfigError, match="cpu_arena must be one of shrink, keep, off"):
        RuntimeOptions(cpu_arena="sometimes")


def test_every_arena_mode_gives_the_same_outputs(tiny_bundle: Path) -> None:
    texts = ["a short one", "a much longer text " * 20]
    results = {}
    for mode in ("shrink", "keep", "off"):
        bundle = bertrt.load(tiny_bundle, device="cpu", options=RuntimeOptions(cpu_arena=mode))
        results[mode] = [r.vector for r in bundle.embedder(texts, pooling="mean")]
    for mode in ("keep", "off"):
        np.testing.assert_array_equal(np.stack(results[mode]), np.stack(results["shrink"]))


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

    assert arena.main(["--models", str(tiny_bundle), "--rounds", "1", "--threads", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["mode"] for r in rows] == ["shrink", "keep", "off"]
    for row in rows:
        assert row["request_128_p50_ms"] > 0 and row["stream_64_best_s"] > 0
        assert row["forward_32x256_median_ms"] >= 0 and row["rss_after_stream_mb"] > 0
