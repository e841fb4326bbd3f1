"""``bertrt.bench.peer_rounds``: W2 embed with the systems taking turns call by call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bertrt.bench.peer_rounds import main, ratios


def test_ratios_are_baseline_over_system_round_by_round() -> None:
    seconds = {"bertrt-int8": [1.0, 2.0, 1.0], "st-int8": [2.0, 2.0, 3.0], "bertrt-fp32": [1.0]}
    [row] = ratios(seconds)  # the pairs missing a system are left out
    assert (row["system"], row["baseline"]) == ("bertrt-int8", "st-int8")
    assert row["round_ratios"] == [2.0, 1.0, 3.0]
    assert row["median_round_ratio"] == 2.0 and row["median_ratio"] == 2.0


def test_the_command_times_bertrt_with_and_without_lanes(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "rounds.json"
    argv = ["--models", str(tiny_bundle), "--texts", "40", "--rounds", "2", "--no-peers", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["seconds"]) == {"bertrt-fp32", "bertrt-int8", "bertrt-fp32-in-turn", "bertrt-int8-in-turn"}
    assert all(len(values) == 2 for values in result["seconds"].values())
    pairs = {(row["system"], row["baseline"]) for row in result["ratios"]}
    assert pairs == {("bertrt-int8", "bertrt-int8-in-turn"), ("bertrt-fp32", "bertrt-fp32-in-turn")}


def test_a_folder_that_is_not_a_bundle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--models", str(tmp_path)])
    assert "is not a bundle" in capsys.readouterr().err
