"""Batch lanes: when a call's batches run side by side on one-thread lanes, and that the
results are those of the same batches run in turn, for every task and precision."""

from __future__ import annotations

import math
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from graph_edits import edit_bundle_file

import bertrt
from bertrt import RuntimeOptions
from bertrt.errors import ConfigError, NonFiniteOutput
from bertrt.lanes import LanePool, lane_batch_size, lane_count, most_lanes
from bertrt.types import Precision

pytestmark = pytest.mark.filterwarnings("ignore:The (qa|classify) head")

TEXTS = [
    "a",
    "the plot of the movie was good and the actors were better",
    "bad",
    "an utterly forgettable film with one fine scene",
    "loved it",
    "the score carries the second half",
    "no",
]


@pytest.mark.parametrize(
    ("setting", "batches", "threads", "lanes"),
    [
        (0, 5, 2, 2),  # auto: one lane per intra-op thread
        (0, 2, 2, 2),
        (0, 1, 2, 1),  # a single batch gets every thread
        (0, 3, 4, 1),  # fewer batches than threads: in turn, so no thread idles
        (0, 9, 1, 1),  # one thread: nothing to run side by side
        (1, 9, 4, 1),  # off
        (3, 9, 1, 3),  # asked for: whenever there are two batches
        (3, 2, 1, 2),
        (3, 1, 8, 1),
    ],
)
def test_lane_count(setting: int, batches: int, threads: int, lanes: int) -> None:
    assert lane_count(setting, batches, threads) == lanes


def test_auto_lanes_with_threads_left_to_onnx_runtime_use_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bertrt.lanes.usable_cores", lambda: 4)
    assert lane_count(0, 4, 0) == 4
    assert lane_count(0, 3, 0) == 1


def test_a_runner_pool_holds_the_most_lanes_a_call_gets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bertrt.lanes.usable_cores", lambda: 4)
    assert [most_lanes(0, 2), most_lanes(0, 0), most_lanes(3, 1), most_lanes(1, 2)] == [2, 4, 3, 2]


def test_negative_lanes_are_refused() -> None:
    with pytest.raises(ConfigError, match="batch_lanes must be 0 or more"):
        RuntimeOptions(batch_lanes=-1)


def test_the_pool_runs_items_at_once_and_keeps_their_order() -> None:
    pool = LanePool(2)
    both_running = threading.Barrier(2, timeout=10)

    def work(item: int) -> int:
        if item < 2:
            both_running.wait()  # only returns if the first two items run at the same time
        return item * item

    assert pool.map(work, list(range(6))) == [0, 1, 4, 9, 16, 25]
    pool.close()


def test_a_failing_item_raises_and_cancels_the_items_not_started() -> None:
    pool = LanePool(1)
    started: list[int] = []

    def work(item: int) -> int:
        started.append(item)
        time.sleep(0.02)  # every other item is queued by the time one ends
        if item == 0:
            raise ValueError("batch 0 failed")
        return item

    with pytest.raises(ValueError, match="batch 0 failed"):
        pool.map(work, list(range(20)))
    time.sleep(0.2)
    assert len(started) < 5  # the failure cancelled the queue; at most a few had started
    pool.close()


def _load(bundle: Path, lanes: int, precision: Precision | str = "fp32", batch_size: int = 4) -> bertrt.Bundle:
    # Batches of 4 make every call below two full batches or more, so two lanes have work.
    options = RuntimeOptions(batch_size=batch_size, intra_op_threads=2, batch_lanes=lanes)
    return bertrt.load(bundle, device="cpu", precision=precision, options=options)


def test_each_lane_takes_a_share_of_the_batch_size() -> None:
    assert [lane_batch_size(32, lanes) for lanes in (1, 2, 3, 4)] == [32, 16, 11, 8]
    assert lane_batch_size(1, 2) == 1


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.INT8])
def test_lanes_give_the_results_of_batches_run_in_turn(tiny_bundle: Path, precision: Precision) -> None:
    # Two lanes run batches of 2 (half the batch size of 4): the same batches as in turn at 2.
    in_turn, lanes = _load(tiny_bundle, 1, precision, batch_size=2), _load(tiny_bundle, 2, precision)
    contexts = ["the actors", "paris is the capital of france " * 30, "it rained all day"]
    questions = ["who?", "what is the capital?", "when?"]
    for bundle in (in_turn, lanes):
        bundle.load_all()

    a, b = in_turn.embedder(TEXTS, normalize=True), lanes.embedder(TEXTS, normalize=True)
    assert all(np.array_equal(x.vector, y.vector) for x, y in zip(a, b, strict=True))
    assert all(np.array_equal(x.token_embeddings, y.token_embeddings) for x, y in zip(a, b, strict=True))
    assert [r.to_dict() for r in in_turn.classifier(TEXTS)] == [r.to_dict() for r in lanes.classifier(TEXTS)]
    answers = [r.to_dict() for r in lanes.qa(questions, contexts)]
    assert [r.to_dict() for r in in_turn.qa(questions, contexts)] == answers

    # The lanes ran on their own one-thread session; the in-turn runner never opened one.
    assert lanes.embedder._lane_session is not None and lanes.embedder._lane_session.intra_op_threads == 1
    assert lanes.qa._lane_session is not None
    assert in_turn.embedder._lane_session is None and in_turn.qa._lane_session is None


def test_a_single_batch_runs_on_the_main_session(tiny_bundle: Path) -> None:
    bundle = _load(tiny_bundle, 0)
    bundle.embedder(["one text"])
    bundle.embedder(["four", "short", "texts", "here"])  # one full batch of 4: every thread on it
    assert bundle.embedder._lane_session is None


def test_a_lane_that_meets_nan_names_the_input(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle_dir = Path(shutil.copytree(tiny_bundle, tmp_path / "tiny"))
    # NaN in the first row of every batch: each lane meets one, and the error names the
    # input of the call's first batch, as the same batches run in turn do.
    edit_bundle_file(bundle_dir / "classifier", "model.onnx", "logits", [((0, 0), math.nan)])
    errors = {}
    for lanes, batch_size in ((1, 2), (2, 4)):  # the same batches of 2 both ways
        classifier = _load(bundle_dir, lanes, batch_size=batch_size).classifier
        with pytest.raises(NonFiniteOutput) as error:
            classifier(TEXTS)
        errors[lanes] = (error.value.output, error.value.index)
    assert errors[2] == errors[1] and errors[2][0] == "logits"
    assert classifier._lane_session is not None
