"""The batch benchmark's bookkeeping: the commands it times and the figures it derives."""

from __future__ import annotations

from pathlib import Path

from bertrt.bench.batch_bench import command, figures


def test_every_system_classifies_the_same_file_with_the_same_cpus(tmp_path: Path) -> None:
    texts, out, models = tmp_path / "w2.txt", tmp_path / "o.jsonl", Path("m")
    assert command("classify-stdin", models, texts, out, 2)[3:5] == ["classify", "-"]
    local = command("batch-local", models, texts, out, 2)
    assert local[3:6] == ["batch", "classify", str(texts)] and "--engine" not in local
    one, two = command("batch-ray-1", models, texts, out, 2), command("batch-ray-2", models, texts, out, 2)
    assert one[-4:] == ["--actors", "1", "--cpus-per-actor", "2"]
    assert two[-4:] == ["--actors", "2", "--cpus-per-actor", "1"]


def test_figures_are_medians_with_marginal_rates_and_ratios() -> None:
    memory = {"driver": 10.0, "actors": 0.0, "ray_own": 0.0}
    runs = []
    for system, big, cold in (("classify-stdin", [12.0, 11.0, 13.0], 2.0), ("batch-local", [10.0, 10.0, 11.0], 2.0)):
        for seconds in big:
            runs.append(
                {"system": system, "size": "big", "seconds": seconds, "memory_mib": memory, "labels": ["a", "b"]}
            )
        runs.append({"system": system, "size": "cold", "seconds": cold, "memory_mib": memory, "labels": ["a"]})
    result = figures(runs, n_texts=1000, cold_texts=10)
    local = result["figures"]["batch-local"]
    assert local["rows_per_s"] == 100.0 and local["cold_start_s"] == 2.0
    assert local["marginal_rows_per_s"] == round(990 / 8, 2) and local["label_agreement"] == 1.0
    assert result["ratios"]["batch-local / classify-stdin"]["rows_per_s"] == round(100.0 / (1000 / 12), 3)
