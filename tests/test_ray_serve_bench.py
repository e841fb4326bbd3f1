"""The Ray Serve benchmark's arithmetic: batch-size histograms from /metrics, and the
figures (medians over rounds, ratios, scaling efficiency) from its rounds. Running it is
`python -m bertrt.bench.ray_serve_bench` (minutes; see benchmarks/README.md)."""

from __future__ import annotations

from typing import Any

import pytest
from bertrt.bench.ray_serve_bench import batch_histogram, figures, memory_by_kind

METRICS = """# TYPE bertrt_batch_size histogram
bertrt_batch_size_bucket{le="1.0",task="classify"} 3.0
bertrt_batch_size_bucket{le="2.0",task="classify"} 3.0
bertrt_batch_size_bucket{le="4.0",task="classify"} 7.0
bertrt_batch_size_bucket{le="+Inf",task="classify"} 8.0
bertrt_batch_size_bucket{le="1.0",task="embed"} 50.0
"""


def test_batch_histogram_counts_the_runs_of_each_bucket() -> None:
    assert batch_histogram(METRICS) == {"<=1": 3.0, "<=2": 0.0, "<=4": 4.0, "<=inf": 1.0}


def summary(rps: float, p50: float) -> dict[str, Any]:
    return {"requests": 10, "errors": 0, "throughput_rps": rps, "p50_ms": p50, "p99_ms": 2 * p50}


def test_figures_take_medians_and_ratios_within_the_run() -> None:
    def ray_round(rps: float) -> dict[str, Any]:
        layouts = {"1x2": summary(rps, 10), "2x1": summary(1.5 * rps, 10), "1x1": summary(rps, 10)}
        return {
            "c1": summary(rps / 4, 8),
            "c32": summary(rps, 20),
            "batch_sizes": {"<=1": 1.0},
            "memory_mib": {"gcs": 50.0, "ray's own": 50.0},
            "cold_start": {"ray_init_s": 5.0, "deploy_to_ready_s": 7.0},
            "layouts": layouts,
        }

    def uvicorn_round(rps: float) -> dict[str, Any]:
        return {
            "c1": summary(rps / 2, 4),
            "c32": summary(rps, 10),
            "batch_sizes": {"<=1": 2.0},
            "memory_mib": {"bertrt serve": 300.0},
            "start_to_ready_s": 3.0,
        }

    runs = {"uvicorn": [uvicorn_round(100), uvicorn_round(120)], "ray": [ray_round(80), ray_round(60)]}
    result = figures(runs, {"1x2": (1, 2.0), "2x1": (2, 1.0), "1x1": (1, 1.0)})
    c32 = result["overhead"]["c32"]
    assert c32["uvicorn"]["throughput_rps"] == 110 and c32["ray"]["throughput_rps"] == 70
    assert c32["ray_over_uvicorn"]["throughput_rps"] == pytest.approx(70 / 110, abs=0.01)
    assert c32["ray_over_uvicorn"]["p50_ms"] == 2.0
    assert result["layouts"]["2x1_over_1x2_throughput"] == 1.5
    assert result["scaling"]["efficiency"] == {"2x1": 0.75, "1x1": 1.0}
    assert result["cold_start_s"] == {"bertrt serve": 3.0, "ray_init_s": 5.0, "deploy_to_ready_s": 7.0}


def test_a_layout_with_no_finished_request_has_no_ratio() -> None:
    """A window too short for any request to finish in it gives 0 requests/s, not a crash."""
    ray_round = {
        "c1": summary(10, 8),
        "c32": summary(10, 8),
        "batch_sizes": {},
        "memory_mib": {"ray's own": 1.0},
        "cold_start": {"ray_init_s": 5.0},
        "layouts": {"1x2": {"requests": 0, "errors": 0, "throughput_rps": 0.0}, "2x1": summary(9, 800)},
    }
    uvicorn_round = {
        "c1": summary(40, 20),
        "c32": summary(30, 500),
        "batch_sizes": {},
        "memory_mib": {"bertrt serve": 1.0},
        "start_to_ready_s": 3.0,
    }
    result = figures({"uvicorn": [uvicorn_round], "ray": [ray_round]}, {"1x2": (1, 2.0), "2x1": (2, 1.0)})
    assert result["layouts"]["2x1_over_1x2_throughput"] is None
    assert result["layouts"]["1x2"]["throughput_rps"] == 0.0


def test_memory_is_summed_by_process_kind() -> None:
    import os

    kinds = memory_by_kind([os.getpid()])
    assert set(kinds) == {"other", "ray's own"} and kinds["other"] > 0
