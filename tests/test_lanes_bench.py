"""``bertrt.bench.lanes``: lanes against batches run in turn, on the tiny bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bertrt.bench.lanes import main

pytestmark = pytest.mark.filterwarnings("ignore:The (qa|classify) head")


def _squad(path: Path) -> Path:
    context = "the film opened in paris in 1999 and ran for three weeks. " * 12
    asked = ["where did it open?", "when?", "how long did it run?", "what opened?"]
    questions = [
        {"id": str(i), "question": q, "answers": [{"text": "paris", "answer_start": 19}]} for i, q in enumerate(asked)
    ]
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": questions}]}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_the_command_times_both_ways_and_finds_the_same_results(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "lanes.json"
    argv = ["--models", str(tiny_bundle), "--texts", "40", "--questions", "4", "--rounds", "1", "--out", str(out)]
    assert main([*argv, "--squad", str(_squad(tmp_path / "squad.json"))]) == 0
    result = json.loads(out.read_text())
    rows = {(row["operation"], row["precision"]): row for row in result["rows"]}
    assert set(rows) == {(op, p) for op in ("embed", "classify", "qa") for p in ("fp32", "int8")}
    for row in rows.values():
        assert row["same_results"] is True
        assert len(row["seconds"]["in-turn"]) == len(row["seconds"]["lanes"]) == 1
        assert row["best_ratio"] > 0 and row["median_round_ratio"] > 0
    assert result["threads"] == 2 and result["machine"]["cpu_model"]


def test_a_folder_that_is_not_a_bundle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--models", str(tmp_path)])
    assert "is not a bundle" in capsys.readouterr().err
