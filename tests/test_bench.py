"""The benchmark harness cannot rot: a smoke run on the tiny bundle writes well-formed
results (and a PNG), runs without torch for the torch-free systems, and its arithmetic
(percentiles, speed-ups, agreement, FLOPs, workload sizes) holds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bertrt.bench import report, workloads
from bertrt.bench.config import BenchConfig
from bertrt.bench.harness import run_benchmark
from bertrt.bench.op_profile import summarize
from bertrt.bench.physical import BertShape
from bertrt.bench.subjects import bundle_models
from bertrt.bench.systems import PlainOrtSystem
from bertrt.bench.timing import LatencyStats, measure_latency
from typer.testing import CliRunner

from bertrt.cli import app
from bertrt.errors import ConfigError
from bertrt.types import Task

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_figures(results: dict[str, Any], systems: set[str]) -> None:
    """Every figure is a positive number for a system that ran, with speed-ups that agree."""
    assert set(results["figures"]["w1.classify.short"]) == systems
    for key, by_system in results["figures"].items():
        for name, figure in by_system.items():
            value = figure.get("p50_ms") or figure.get("items_per_s")
            assert value is not None and value > 0 and math.isfinite(value), (key, name)
            for baseline, ratio in results["ratios"][key][name].items():
                assert ratio == pytest.approx(report.cost(by_system[baseline]) / report.cost(figure))


def test_smoke_cli_writes_results_and_plot(tiny_bundle: Path, tmp_path: Path) -> None:
    out, plot = tmp_path / "results.json", tmp_path / "plot.png"
    args = [
        "bench",
        "--models",
        str(tiny_bundle),
        "--smoke",
        "--json",
        "--out",
        str(out),
        "--plot",
        str(plot),
        "--system",
        "ort",
        "--system",
        "bertrt-fp32",
        "--system",
        "bertrt-fp16",
        "--passes",
        "2",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert printed["figures"] == written["figures"]
    _check_figures(written, {"ort", "bertrt-fp32"})
    assert "bertrt-fp16" in written["skipped"]  # fp16 is not timed on the CPU
    assert written["figures"]["w2.classify"]["bertrt-fp32"]["passes"] == 2  # --passes reaches the streams
    assert written["machine"]["logical_cores"] >= 1 and written["machine"]["cpu_model"]
    assert written["gemm"]["peak_gflops"] > 0
    assert written["footprint"]["bertrt-fp32"]["peak_rss_mb"] > 0
    assert all({"name", "bound", "value", "met"} <= set(t) for t in written["targets"])
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    assert written["command"] == sys.argv  # the command line this process was started with


def _squad_file(tmp_path: Path) -> Path:
    """The shared held-out SQuAD file, or four short questions where the shared data is absent."""
    from bertrt.bench.config import DEFAULT_SQUAD

    if DEFAULT_SQUAD.is_file():
        return DEFAULT_SQUAD
    context = "Paris is the capital of France. It lies on the Seine."
    questions = [("Capital?", "Paris", 0), ("Country?", "France", 24), ("River?", "Seine", 47), ("City?", "Paris", 0)]
    qas = [
        {"id": str(i), "question": q, "answers": [{"text": a, "answer_start": start}]}
        for i, (q, a, start) in enumerate(questions)
    ]
    path = tmp_path / "squad.json"
    path.write_text(
        json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}),
        encoding="utf-8",
    )
    return path


def test_smoke_run_covers_every_baseline(tiny_bundle: Path, tmp_path: Path) -> None:
    config = BenchConfig.preset(
        "smoke",
        bundle=tiny_bundle,
        workloads=("w1", "w3"),
        repeats=2,
        max_seconds=0.1,
        squad_path=_squad_file(tmp_path),
    )
    results = run_benchmark(config, log=lambda _: None)
    # Every variant the bundle holds that runs on the CPU is timed; fp16 is for GPUs.
    from bertrt.bench.machine import has_bf16_matmul

    bertrt_systems = {f"bertrt-{p}" for p in results["bundle"]["variants"] if p != "fp16"}
    # torch-bf16 runs where the CPU has bf16 matrix instructions; sentence-transformers only embeds.
    bf16 = {"torch-bf16"} if has_bf16_matmul() else set()
    baselines = {"torch", "torch-pipeline", "optimum", "optimum-pipeline", "ort"} | bf16
    _check_figures(results, baselines | bertrt_systems)
    assert set(results["figures"]["w3.qa"]) == {"torch-pipeline", "optimum-pipeline"} | bf16 | bertrt_systems
    # Same file, same tokenizer, same truncation: every system picks the same labels.
    assert all(share == 1.0 for share in results["agreement"]["w1.classify.long"]["systems"].values())
    json.loads(json.dumps(results))  # JSON-ready as it stands


def test_peers_embed_with_sentence_transformers_and_bf16(tiny_bundle: Path) -> None:
    """sentence-transformers' three backends and PyTorch bf16 time W2 embeddings; the vectors of
    every system are scored against sentence-transformers' fp32 ones; the CPU is described."""
    from bertrt.bench.machine import has_bf16_matmul

    systems = ("st-torch", "st-onnx", "st-int8", "torch-bf16", "bertrt-fp32", "bertrt-int8")
    config = BenchConfig.preset("smoke", bundle=tiny_bundle, workloads=("w2", "scaling"), systems=systems)
    results = run_benchmark(config, log=lambda _: None)
    ran = {"st-torch", "st-onnx", "st-int8", "bertrt-fp32", "bertrt-int8"}
    if has_bf16_matmul():
        ran.add("torch-bf16")
    else:
        assert "avx512_bf16" in results["skipped"]["torch-bf16"]
    assert set(results["figures"]["w2.embed"]) == ran
    assert "st-int8" not in results["figures"]["w2.classify"]  # sentence-transformers only embeds
    fidelity = results["fidelity"]["w2.embed"]
    assert fidelity["reference"] == "st-torch"
    cosines = fidelity["systems"]
    # Same weights, same pooling: fp32 ONNX files match PyTorch; int8 files are close, not equal.
    assert cosines["st-onnx"]["min_cosine"] > 0.9999 and cosines["bertrt-fp32"]["min_cosine"] > 0.9999
    for name in ("st-int8", "bertrt-int8"):
        assert 0.5 < cosines[name]["min_cosine"] <= cosines[name]["mean_cosine"] < 1.0
    assert results["ratios"]["w2.embed"]["bertrt-int8"]["st-int8"] > 0
    targets = {t["name"]: t for t in results["targets"]}
    lead = targets["W2 embed: bertrt-int8 min cosine to st-torch, less st-int8's"]["value"]
    assert lead == pytest.approx(cosines["bertrt-int8"]["min_cosine"] - cosines["st-int8"]["min_cosine"])
    assert targets["32 x 256 forward: bertrt-int8 speed-up over bertrt-fp32"]["value"] > 0
    assert "avx2" in results["machine"]["cpu_features"] or results["machine"]["cpu_features"] == []


def test_bench_runs_without_torch(tiny_bundle: Path, tmp_path: Path) -> None:
    # `None` in sys.modules makes `import torch` fail, as on a runtime-only install.
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'optimum'): sys.modules[name] = None\n"
        "from bertrt.cli import app\n"
        f"app(['bench', '--models', {str(tiny_bundle)!r}, '--smoke', '--out', {str(tmp_path / 'r.json')!r},\n"
        "     '--system', 'torch-pipeline', '--system', 'bertrt-fp32',\n"
        "     '--workload', 'w1', '--workload', 'footprint'])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert "pip install" in results["skipped"]["torch-pipeline"]
    assert set(results["figures"]["w1.classify.short"]) == {"bertrt-fp32"}
    assert "torch" not in results["footprint"]


def test_unknown_system_is_refused() -> None:
    with pytest.raises(ConfigError, match="bertrt-fp32"):
        BenchConfig(bundle=Path("."), systems=("bertrt-fp64",))


def test_latency_percentiles_follow_the_samples() -> None:
    rng = np.random.default_rng(0)
    samples = rng.exponential(0.01, size=1000).tolist()
    stats = LatencyStats.from_seconds(samples)
    assert stats.count == 1000
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.p50_ms == pytest.approx(np.median(samples) * 1e3)
    calls: list[int] = []
    measured = measure_latency(lambda: calls.append(1), warmup=3, repeats=7)
    assert measured.count == 7 and len(calls) == 10


def test_speedups_and_agreement() -> None:
    figures = {
        "f": {"ort": {"p50_ms": 6.0}, "bertrt-fp32": {"p50_ms": 2.0}},
        "g": {"ort": {"items_per_s": 10.0}, "bertrt-fp32": {"items_per_s": 25.0}},
    }
    ratios = report.speedups(figures, ("ort",))
    assert ratios["f"]["bertrt-fp32"]["ort"] == pytest.approx(3.0)
    assert ratios["g"]["bertrt-fp32"]["ort"] == pytest.approx(2.5)
    assert ratios["f"]["ort"] == {}
    shares = report.agreement({"f": {"torch": ["a", "b", "c", "d"], "bertrt-fp32": ["a", "b", "x", "d"]}}, ("torch",))
    assert shares["f"]["systems"] == {"torch": 1.0, "bertrt-fp32": 0.75}


def test_overhead_compares_bertrt_with_plain_ort_figure_by_figure_and_overall() -> None:
    def pair(ort_ms: float, bertrt_ms: float, rounds: tuple[float, ...]) -> dict[str, Any]:
        return {
            "ort": {"p50_ms": ort_ms, "rounds_p50_ms": [ort_ms] * len(rounds)},
            "bertrt-fp32": {"p50_ms": bertrt_ms, "rounds_p50_ms": list(rounds)},
        }

    figures = {
        "w1.classify.short": pair(2.0, 2.0, (1.9, 2.1)),
        "scaling.batch.8x128": pair(110.0, 100.0, (100.0, 100.0)),
        "peak_batch.32x256": pair(900.0, 1000.0, (1000.0, 800.0)),
        # W2 is throughput, not part of the comparison; nor is a figure without bertrt.
        "w2.classify": {"ort": {"items_per_s": 1.0}, "bertrt-fp32": {"items_per_s": 2.0}},
        "w1.embed.short": {"ort": {"p50_ms": 1.0}},
    }
    result = report.overhead(figures)
    assert set(result["figures"]) == {"w1.classify.short", "scaling.batch.8x128", "peak_batch.32x256"}
    assert result["figures"]["peak_batch.32x256"]["rounds"] == pytest.approx([0.9, 1.125])
    assert result["figures"]["peak_batch.32x256"]["rounds_ahead"] == 1
    assert result["lowest"] == pytest.approx(0.9)
    assert result["geomean"] == pytest.approx((1.0 * 1.1 * 0.9) ** (1 / 3))
    low, high = result["geomean_ci95"]
    assert low < result["geomean"] < high
    assert (result["rounds_ahead"], result["rounds"]) == (4, 6)
    assert report.overhead({"w1.x": {"ort": {"p50_ms": 1.0}}}) == {}
    # The lowest figure is judged against the 1.00x bound.
    [judged] = [t for t in report.targets({"overhead": result}) if "same file" in t["name"]]
    assert judged["met"] is False and judged["value"] == pytest.approx(0.9)


def test_the_twin_of_plain_ort_sets_the_band_that_identical_systems_drift_within() -> None:
    def trio(ort_ms: float, twin_ms: float, bertrt_ms: float) -> dict[str, Any]:
        return {"ort": {"p50_ms": ort_ms}, "ort-twin": {"p50_ms": twin_ms}, "bertrt-fp32": {"p50_ms": bertrt_ms}}

    figures = {
        # The twin lands 5% behind ort here and 2% ahead there: identical systems, 5% apart.
        "w1.classify.short": trio(1.0, 1.05, 1.04),
        "scaling.batch.1x16": trio(1.0, 0.98, 1.0),
        # bertrt 10% behind: more than the twin's drift explains.
        "peak_batch.32x256": trio(1.0, 1.0, 1.1),
    }
    result = report.overhead(figures)
    assert result["figures"]["w1.classify.short"]["twin_ratio"] == pytest.approx(1 / 1.05)
    twin = result["twin"]
    assert twin["system"] == "ort-twin" and twin["figures"] == 3
    assert (twin["lowest"], twin["highest"]) == (pytest.approx(1 / 1.05), pytest.approx(1 / 0.98))
    assert twin["band"] == pytest.approx([1 / 1.05, 1.05])
    # 1/1.04 is inside the band; 1/1.1 is below it.
    assert twin["behind_beyond_band"] == ["peak_batch.32x256"]
    [judged] = [t for t in report.targets({"overhead": result}) if "band" in t["name"]]
    assert judged["met"] is False and judged["value"] == 1.0
    printed = report.markdown_table({"overhead": result})
    assert any("ort-twin over ort" in line and "peak_batch.32x256" in line for line in printed.splitlines())
    # Without the twin there is no band and no target for it.
    del figures["w1.classify.short"]["ort-twin"], figures["scaling.batch.1x16"]["ort-twin"]
    del figures["peak_batch.32x256"]["ort-twin"]
    assert "twin" not in report.overhead(figures)
    assert not [t for t in report.targets({"overhead": report.overhead(figures)}) if "band" in t["name"]]


def test_op_profile_sums_kernel_time_per_operator() -> None:
    def node(name: str, op: str, ts: int, dur: int) -> dict[str, Any]:
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    runs = [{"cat": "Session", "name": "model_run", "ts": ts} for ts in (0, 100, 200)]
    events = runs + [
        node("warm", "MatMul", 10, 999),
        node("a", "MatMul", 110, 30),
        node("b", "MatMul", 120, 10),
        node("c", "Add", 130, 20),
        node("a", "MatMul", 210, 30),
        node("c", "Add", 230, 10),
    ]
    summary = summarize(events, total_runs=3)
    assert summary["by_op"]["MatMul"] == {"ms_per_run": 0.035, "share": 0.7, "nodes": 2}
    assert summary["by_op"]["Add"]["ms_per_run"] == pytest.approx(0.015)
    assert list(summary["by_op"]) == ["MatMul", "Add"]


def test_forward_flops_match_a_matmul_count() -> None:
    shape = BertShape(layers=2, hidden=8, intermediate=20)
    batch, seq = 3, 5
    per_layer = sum(2 * batch * seq * k * n for k, n in [(8, 8)] * 4 + [(8, 20), (20, 8)])
    per_layer += 2 * 2 * batch * seq * seq * 8  # Q K^T and the weighted sum of V
    assert shape.forward_flops(batch, seq) == 2 * per_layer


def test_w1_long_text_has_the_asked_token_count(tiny_bundle: Path) -> None:
    tokenizer = workloads.load_tokenizer(tiny_bundle / "classifier")
    source = workloads.LONG_SOURCE
    for n in (16, 40, 64):
        text = workloads.w1_texts(tokenizer, long_tokens=n)["long"]
        assert source.startswith(text) and len(tokenizer.encode(text).ids) <= n
        # The longest such prefix cut between words: one more word would not fit.
        next_space = source.find(" ", len(text) + 1)
        assert len(tokenizer.encode(source[:next_space]).ids) > n


def test_mixed_stream_is_seeded_and_three_to_one() -> None:
    stream = workloads.mixed_stream(400, seed=3)
    assert stream == workloads.mixed_stream(400, seed=3)
    assert stream != workloads.mixed_stream(400, seed=4)
    # Rotten Tomatoes sentences are short, IMDB reviews long: the share of long texts is ~1/4.
    long_share = np.mean([len(t) > 400 for t in stream])
    assert 0.15 < long_share < 0.3


def test_stream_texts_are_capped_at_the_w2_length(tiny_bundle: Path) -> None:
    tokenizer = workloads.load_tokenizer(tiny_bundle / "classifier")
    stream = workloads.mixed_stream(40, seed=3)
    capped = workloads.cap_tokens(tokenizer, stream, 48)
    for original, text in zip(stream, capped, strict=True):
        n_tokens = len(tokenizer.encode(original).ids)
        assert text == original if n_tokens <= 48 else original.startswith(text)
        assert len(tokenizer.encode(text).ids) <= 48
    assert capped != stream  # the long IMDB reviews were cut


def test_bf16_probe_finds_no_cpu_gemm_kernel() -> None:
    """benchmarks/README.md's bf16 finding: ONNX Runtime's CPU provider opens a bfloat16 Cast
    but has no bfloat16 MatMul or Attention. If this fails, ONNX Runtime gained a bf16 path:
    the finding is stale and a bf16 variant is worth measuring."""
    from bertrt.bench.bf16_probe import probe_bf16_kernels

    found = probe_bf16_kernels()
    assert found["Cast"] is None
    for op in ("MatMul", "Gemm", "Attention", "MultiHeadAttention"):
        reason = found[op]
        assert reason is not None and "NOT_IMPLEMENTED" in reason, op


def test_plain_onnx_runtime_can_drive_bertrts_own_session(tiny_bundle: Path) -> None:
    """The overhead benchmark's `ort-shared` runs bertrt's session through a plain loop: the
    same session object, so both systems share the model's memory, and the same labels."""
    from bertrt.bench.subjects import bundle_models
    from bertrt.bench.systems import PlainOrtSystem, SystemSettings

    import bertrt
    from bertrt.types import Task

    bundle = bertrt.load(tiny_bundle, device="cpu")
    session = bundle.classifier.session.inference_session
    shared = PlainOrtSystem(bundle_models(tiny_bundle), SystemSettings(threads=1), sessions={Task.CLASSIFY: session})
    texts = ["a fine film", "dull and long, far too long"]
    assert shared._load(Task.CLASSIFY)[0] is session
    assert shared.classify(texts) == [result.label for result in bundle.classifier(texts)]


def test_session_alternation_times_each_mode_against_calls_alone(tiny_bundle: Path, tmp_path: Path) -> None:
    from bertrt.bench import session_alternation

    out = tmp_path / "alternation.json"
    argv = ["--models", str(tiny_bundle), "--threads", "1", "--calls", "2", "--rounds", "1", "--out", str(out)]
    assert session_alternation.main(argv) == 0
    figures = json.loads(out.read_text())["figures"]
    assert "1x11" in figures and len(figures) == 2
    for modes in figures.values():
        assert set(modes) == {"alone", "after-other", "after-other-and-pause"}
        assert modes["alone"]["vs_alone"] == 1.0 and all(m["p50_ms"] > 0 and m["calls"] == 2 for m in modes.values())


def test_latency_figures_are_measured_in_rounds_that_take_turns(tiny_bundle: Path) -> None:
    systems = ("ort", "bertrt-fp32")
    config = BenchConfig.preset(
        "smoke", bundle=tiny_bundle, workloads=("w1", "scaling"), systems=systems, latency_rounds=3, max_seconds=0.05
    )
    lines: list[str] = []
    results = run_benchmark(config, log=lines.append)
    turns = [line for line in lines if line.startswith("W1 classify short:")]
    # Three rounds, the order reversed every other round.
    assert turns == [
        "W1 classify short: ort (round 1 of 3)",
        "W1 classify short: bertrt-fp32 (round 1 of 3)",
        "W1 classify short: bertrt-fp32 (round 2 of 3)",
        "W1 classify short: ort (round 2 of 3)",
        "W1 classify short: ort (round 3 of 3)",
        "W1 classify short: bertrt-fp32 (round 3 of 3)",
    ]
    for key in ("w1.classify.short", "scaling.batch.4x32"):
        for system in systems:
            figure = results["figures"][key][system]
            assert len(figure["rounds_p50_ms"]) == 3
            # Each round's share of stolen CPU time: a fraction where /proc/stat exists.
            assert len(figure["rounds_steal"]) == 3
            assert all(s is None or 0.0 <= s <= 1.0 for s in figure["rounds_steal"])
            # The figure is over every round's calls: at least the smallest round median is in.
            assert figure["count"] >= 3 and figure["min_ms"] <= min(figure["rounds_p50_ms"])
    # W2 and W3 are throughput figures, measured once.
    assert not any("W2" in line and "round" in line for line in lines)
    assert set(results["cpu_steal"]) == {line.split(":")[0] for line in lines if ": " in line and "round" in line}
    # The zero-overhead comparison covers the W1 and model-level figures both systems ran.
    compared = results["overhead"]["figures"]
    assert "w1.classify.short" in compared and "scaling.batch.4x32" in compared


def test_the_twin_runs_as_a_second_plain_ort_with_sessions_of_its_own(tiny_bundle: Path) -> None:
    from bertrt.bench import harness

    config = BenchConfig.preset(
        "smoke", bundle=tiny_bundle, workloads=("w1",), systems=("ort", "ort-twin", "bertrt-fp32"), sessions=2
    )
    copies = harness.open_system_copies(config, bundle_models(tiny_bundle), {}, lambda _: None)
    names = [[system.name for system in copy] for copy in copies]
    assert names == [["ort", "ort"], ["ort-twin", "ort-twin"], ["bertrt-fp32", "bertrt-fp32"]]
    text = ["a short review"]
    assert copies[1][0].classify(text) == copies[0][0].classify(text)
    ort_session = copies[0][0]._load(Task.CLASSIFY)[0]  # type: ignore[attr-defined]
    assert copies[1][0]._load(Task.CLASSIFY)[0] is not ort_session  # type: ignore[attr-defined]
    for copy in copies:
        for system in copy:
            system.close()
    results = run_benchmark(config)
    compared = results["overhead"]["figures"]["w1.classify.short"]
    assert compared["twin_ratio"] > 0 and results["overhead"]["twin"]["figures"] == len(results["overhead"]["figures"])
    # The twin is opt-in: the default systems leave it out.
    assert "ort-twin" not in BenchConfig.preset("smoke", bundle=tiny_bundle).systems


def test_steal_share_reads_the_hypervisors_share_between_two_readings() -> None:
    from bertrt.bench.machine import cpu_ticks, steal_share

    assert steal_share((10, 1000), (30, 1100)) == pytest.approx(0.2)
    assert steal_share((10, 1000), (10, 1000)) is None and steal_share(None, (1, 2)) is None
    ticks = cpu_ticks()
    if sys.platform == "linux":
        assert ticks is not None and 0 <= ticks[0] <= ticks[1]


def test_sessions_give_each_round_to_a_fresh_copy_of_every_system(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --sessions 2 the rounds alternate between two copies of each system, each with
    sessions of its own, and the figure pools the calls of both."""
    from bertrt.bench import harness

    opened: list[object] = []
    make = harness.make_system

    def recording_make(*args: object, **kwargs: object) -> object:
        system = make(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(system)
        return system

    monkeypatch.setattr(harness, "make_system", recording_make)
    sessions: list[object] = []
    open_session = PlainOrtSystem._open

    def recording_open(self: PlainOrtSystem, info: object) -> object:
        sessions.append(open_session(self, info))  # type: ignore[arg-type]
        return sessions[-1]

    monkeypatch.setattr(PlainOrtSystem, "_open", recording_open)
    systems = ("ort", "bertrt-fp32")
    config = BenchConfig.preset(
        "smoke", bundle=tiny_bundle, workloads=("w1",), systems=systems, latency_rounds=4, sessions=2,
        max_seconds=0.05,
    )
    lines: list[str] = []
    results = run_benchmark(config, log=lines.append)
    turns = [line for line in lines if line.startswith("W1 classify short: ort")]
    assert turns == [f"W1 classify short: ort (round {r} of 4) [copy {r % 2 or 2} of 2]" for r in range(1, 5)]
    # Two of each system, four distinct objects, each copy with its own sessions.
    assert len(opened) == 4 and len({id(s) for s in opened}) == 4
    # Each plain ONNX Runtime copy opened its own classifier and embedder sessions.
    assert len(sessions) == 4 and len({id(s) for s in sessions}) == 4
    figure = results["figures"]["w1.classify.short"]["bertrt-fp32"]
    assert len(figure["rounds_p50_ms"]) == 4 and figure["count"] >= 4
    assert results["config"]["sessions"] == 2


def test_sessions_may_not_outnumber_the_rounds(tiny_bundle: Path) -> None:
    with pytest.raises(ConfigError, match=r"sessions \(3\) must not exceed the rounds \(2\)"):
        BenchConfig.preset("smoke", bundle=tiny_bundle, latency_rounds=2, sessions=3)
    result = CliRunner().invoke(app, ["bench", "--models", str(tiny_bundle), "--smoke", "--sessions", "3"])
    assert result.exit_code != 0 and "raise --rounds or lower --sessions" in result.output


@pytest.mark.parametrize("preset", ["avx2", "avx512_vnni"])  # uint8 weights, and int8 weights
def test_st_int8_finds_the_file_it_quantized_under_every_preset(
    preset: str, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sentence-transformers names its int8 file after the preset's weight type, so the system
    names the file itself; each preset's file loads on any CPU (only its speed differs)."""
    from bertrt.bench import st_systems
    from bertrt.bench.subjects import bundle_models
    from bertrt.bench.systems import SystemSettings

    monkeypatch.setattr(st_systems, "int8_preset", lambda: preset)
    system = st_systems.make("st-int8", bundle_models(tiny_bundle), SystemSettings(threads=1))
    try:
        vectors = np.asarray(system.embed(["I love Paris", "a"]))
        assert vectors.shape[0] == 2 and np.isfinite(vectors).all()
        assert (system._folder / "model" / st_systems.INT8_FILE.format(preset=preset)).is_file()  # type: ignore[operator]
    finally:
        system.close()


def test_arena_rounds_times_bertrt_with_and_without_the_arena_policy_against_plain_ort(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    from bertrt.bench import arena_rounds

    out = tmp_path / "arena-rounds.json"
    argv = ["--models", str(tiny_bundle), "--threads", "1", "--rounds", "2", "--shape", "2x16", "--shape", "40x32"]
    assert arena_rounds.main([*argv, "--out", str(out)]) == 0
    figures = json.loads(out.read_text())["figures"]
    assert set(figures) == {"2x16", "40x32"}
    for systems in figures.values():
        assert set(systems) == {"ort", "bertrt-adaptive", "bertrt-keep"}
        for name in ("bertrt-adaptive", "bertrt-keep"):
            assert len(systems[name]["rounds_vs_ort"]) == 2 and systems[name]["vs_ort"] > 0
        for name in ("ort", "bertrt-adaptive", "bertrt-keep"):
            faults = systems[name]["rounds_faults"]
            assert len(faults) == 2 and all(isinstance(n, int) and n >= 0 for n in faults)


def test_arena_rounds_refuses_a_shape_it_cannot_read() -> None:
    from bertrt.bench import arena_rounds

    with pytest.raises(SystemExit):
        arena_rounds.main(["--shape", "32by256"])


def test_arena_rounds_refuses_a_missing_bundle_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bertrt.bench import arena_rounds

    with pytest.raises(SystemExit):
        arena_rounds.main(["--models", str(tmp_path / "missing"), "--out", str(tmp_path / "out.json")])
    assert "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_session_options_times_every_variant_against_the_plain_session(tiny_bundle: Path, tmp_path: Path) -> None:
    from bertrt.bench import session_options

    out = tmp_path / "session-options.json"
    argv = ["--models", str(tiny_bundle), "--threads", "1", "--rounds", "2", "--seconds", "0.01", "--out", str(out)]
    variants = ["--variant", "denormal-as-zero", "--variant", "one-thread", "--variant", "huge-pages"]
    assert session_options.main([*argv, *variants]) == 0
    record = json.loads(out.read_text())
    assert record["rounds"] == 2 and "1x16" in record["figures"]
    # Only the huge-pages session has a note: what moved (or why nothing did) and how fast.
    assert set(record["sessions"]) == {"huge-pages"}
    moved = record["sessions"]["huge-pages"]["huge_pages"]
    assert moved.endswith(" s") and ("on 2 MiB pages" in moved or moved.startswith("not used: "))
    for figure in record["figures"].values():
        assert set(figure) == {"base", "denormal-as-zero", "one-thread", "huge-pages"}
        assert all(len(stats["rounds_ms"]) == 2 and stats["p50_ms"] > 0 for stats in figure.values())
        assert 0 <= figure["one-thread"]["rounds_ahead"] <= 2 and figure["one-thread"]["vs_base"] > 0


def test_session_options_refuses_a_missing_bundle_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bertrt.bench import session_options

    with pytest.raises(SystemExit):
        session_options.main(["--models", str(tmp_path / "missing")])
    assert "is not a folder" in capsys.readouterr().err


def test_chunking_times_row_chunks_against_the_whole_batch_on_one_session(tiny_bundle: Path, tmp_path: Path) -> None:
    from bertrt.bench import chunking

    out = tmp_path / "chunking.json"
    argv = ["--models", str(tiny_bundle), "--threads", "1", "--rounds", "2", "--seconds", "0.05"]
    argv += ["--precision", "fp32", "--budget", "64", "--shape", "2x16", "--shape", "8x32"]
    assert chunking.main([*argv, "--out", str(out)]) == 0
    figures = json.loads(out.read_text())["figures"]["fp32"]
    assert set(figures) == {"2x16", "8x32"}
    # 32 tokens fit the budget and run whole; 8 x 32 runs in chunks of two rows.
    assert figures["2x16"]["64"]["rows_per_chunk"] == 2 and figures["8x32"]["64"]["rows_per_chunk"] == 2
    assert figures["8x32"]["whole"]["rows_per_chunk"] == 8
    for figure in figures.values():
        assert len(figure["whole"]["rounds_ms"]) == 2 and figure["64"]["vs_whole"] > 0
        # The cut run's outputs are the whole run's, to float32 rounding at most.
        assert figure["64"]["max_abs_difference"] <= 1e-5


def test_chunking_refuses_a_budget_below_one() -> None:
    from bertrt.bench import chunking

    with pytest.raises(SystemExit):
        chunking.main(["--budget", "0"])


@pytest.mark.filterwarnings("ignore:The qa head")
def test_chunking_streams_time_w2_and_w3_whole_and_cut_with_the_same_results(tiny_bundle: Path, tmp_path: Path) -> None:
    from bertrt.bench import chunking

    out = tmp_path / "chunking-streams.json"
    argv = ["--models", str(tiny_bundle), "--threads", "1", "--rounds", "2", "--precision", "fp32", "--streams"]
    argv += ["--stream-texts", "40", "--qa-questions", "4", "--squad", str(_squad_file(tmp_path))]
    assert chunking.main([*argv, "--out", str(out)]) == 0
    streams = json.loads(out.read_text())["streams"]["fp32"]
    assert set(streams) == {"w2.classify", "w2.embed", "w3.qa"}
    for stream in streams.values():
        assert stream["whole_per_s"] > 0 and stream["cut_per_s"] > 0 and len(stream["rounds_cut_vs_whole"]) == 2
    assert streams["w2.classify"]["same_outputs"] and streams["w3.qa"]["same_outputs"]
    assert streams["w2.embed"]["max_abs_difference"] <= 1e-5
