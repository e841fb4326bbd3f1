"""`bertrt batch --engine ray` on a real local Ray cluster: the same rows as the local engine,
in input order, with Ray's traps handled, and a worker node lost mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from batch_files import qa_records, read_output, records, write_input

from bertrt.batch import BadRowError, BatchJob, BatchReport, run_local
from bertrt.batch.ray_engine import ActorPlan, BundleActor, RayOptions, run_ray
from bertrt.errors import ConfigError
from bertrt.types import Device, Task

pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore:The .* head")]
T = TypeVar("T")
# A job that takes longer than this is stuck (on 2 busy cores a tiny job takes ~15 s).
DEADLINE_S = 150
TESTS = Path(__file__).resolve().parent


def within_deadline(call: Callable[[], T]) -> T:
    """``call()``, or a failure naming the hang if it does not return in time."""
    result: list[T] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            result.append(call())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"the Ray job did not finish in {DEADLINE_S} s"
    if errors:
        raise errors[0]
    return result[0]


def both_engines(
    tiny_bundle: Path, tmp_path: Path, task: Task, source: Path, suffix: str, actors: int | None = 2, **options: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], BatchReport]:
    """The local engine's and the Ray engine's output rows for one job, and Ray's report."""
    common = {"models": tiny_bundle, "device": Device.CPU, "chunk_rows": 40, **options}
    run_local(BatchJob(task, source, tmp_path / f"local{suffix}", **common))
    job = BatchJob(task, source, tmp_path / f"ray{suffix}", **common)
    report = within_deadline(lambda: run_ray(job, RayOptions(actors=actors)))
    return read_output(tmp_path / f"local{suffix}"), read_output(tmp_path / f"ray{suffix}"), report


def assert_same_rows(local: list[dict[str, Any]], ray: list[dict[str, Any]], task: Task) -> None:
    """Input order, ids and errors identical; labels and answers identical; numbers within 1e-5."""
    assert [r["row"] for r in ray] == [r["row"] for r in local] == list(range(1, len(local) + 1))
    assert [r["id"] for r in ray] == [r["id"] for r in local]
    assert [r["error"] for r in ray] == [r["error"] for r in local]
    if task is Task.EMBED:
        for a, b in zip(local, ray, strict=True):
            assert (a["embedding"] is None) == (b["embedding"] is None)
            if a["embedding"] is not None:
                np.testing.assert_allclose(b["embedding"], a["embedding"], atol=1e-5)
    if task is Task.CLASSIFY:
        assert [r["label"] for r in ray] == [r["label"] for r in local]
    if task is Task.QA:
        assert [(r["answer"], r["start"], r["end"]) for r in ray] == [
            (r["answer"], r["start"], r["end"]) for r in local
        ]
    if "score" in local[0]:
        np.testing.assert_allclose(
            [np.nan if r["score"] is None else r["score"] for r in ray],
            [np.nan if r["score"] is None else r["score"] for r in local],
            atol=1e-5,
        )


@pytest.mark.parametrize(
    ("suffix", "task", "out"),
    [
        (".txt", Task.CLASSIFY, ".jsonl"),
        (".jsonl", Task.EMBED, ".parquet"),
        (".csv", Task.CLASSIFY, ".parquet"),
        (".parquet", Task.EMBED, ".jsonl"),
    ],
)
def test_ray_writes_the_local_engines_rows_in_input_order(
    ray_session: Any, tiny_bundle: Path, tmp_path: Path, suffix: str, task: Task, out: str
) -> None:
    rows = records(300)
    rows[7]["text"] = ""  # a bad row in every format
    id_column = None if suffix == ".txt" else "id"
    source = write_input(tmp_path / f"in{suffix}", rows)
    local, ray, report = both_engines(tiny_bundle, tmp_path, task, source, out, id_column=id_column)
    assert report.engine == "ray" and report.rows == 300 and report.bad_rows == 1
    assert local[7]["error"] in ("'text' is empty", "the line is empty")
    assert_same_rows(local, ray, task)


def test_ray_answers_questions_like_the_local_engine(ray_session: Any, tiny_bundle: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "qa.jsonl", qa_records(60))
    local, ray, _ = both_engines(tiny_bundle, tmp_path, Task.QA, source, ".jsonl", id_column="id")
    assert all(r["answer"] for r in local)
    assert_same_rows(local, ray, Task.QA)


def test_ray_reports_bad_json_lines_as_the_local_engine_does(
    ray_session: Any, tiny_bundle: Path, tmp_path: Path
) -> None:
    """Arrow's JSON reader would fail the whole read on these; the actors parse them one by one."""
    lines = [json.dumps(row) for row in records(50)]
    lines[3] = json.dumps({"id": 3, "text": 42})  # an integer id among strings, a number for a text
    lines[10] = "{broken"
    lines[11] = json.dumps({"id": "doc-11"})
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    local, ray, report = both_engines(tiny_bundle, tmp_path, Task.CLASSIFY, source, ".jsonl", id_column="id")
    assert report.bad_rows == 3 and [r["id"] for r in ray][3] == 3
    assert ray[3]["error"] == "'text' is a number, not a string" and ray[11]["error"] == "missing 'text' field"
    assert_same_rows(local, ray, Task.CLASSIFY)


def test_strict_stops_a_ray_job_and_leaves_nothing(ray_session: Any, tiny_bundle: Path, tmp_path: Path) -> None:
    rows = records(120)
    rows[90]["text"] = " "
    source = write_input(tmp_path / "in.csv", rows)
    job = BatchJob(Task.CLASSIFY, source, tmp_path / "o.parquet", models=tiny_bundle, chunk_rows=30, strict=True)
    with pytest.raises(BadRowError, match="in.csv row 91: 'text' is empty"):
        within_deadline(lambda: run_ray(job, RayOptions(actors=1)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_an_address_that_answers_nothing_fails_even_with_ray_running(
    ray_session: Any, tiny_bundle: Path, tmp_path: Path
) -> None:
    """This process has joined the session's instance already: an explicit address must still
    be checked, not silently replaced by the cluster the process happens to be on."""
    assert ray_session.is_initialized()
    source = write_input(tmp_path / "in.txt", records(3))
    job = BatchJob(Task.CLASSIFY, source, tmp_path / "o.jsonl", models=tiny_bundle)
    with pytest.raises(ConfigError, match="No Ray cluster answers at 127.0.0.1:9"):
        within_deadline(lambda: run_ray(job, RayOptions(address="127.0.0.1:9", actors=1)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
    assert ray_session.is_initialized()


def test_a_pool_of_every_cpu_still_reads(ray_session: Any, tiny_bundle: Path, tmp_path: Path) -> None:
    """Two 1-CPU actors on the 2-CPU cluster (the default: as many as fit): without room for
    the read tasks, this job would wait forever for its input."""
    assert ray_session.cluster_resources()["CPU"] == 2
    source = write_input(tmp_path / "in.txt", records(200))
    job = BatchJob(Task.EMBED, source, tmp_path / "o.parquet", models=tiny_bundle, chunk_rows=25)
    report = within_deadline(lambda: run_ray(job, RayOptions(actors=None, cpus_per_actor=1)))
    assert report.rows == 200


def test_no_dataset_is_materialized(
    ray_session: Any, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the job materialized a dataset")

    monkeypatch.setattr(ray_session.data.Dataset, "materialize", refuse)
    monkeypatch.setattr(ray_session.data.Dataset, "take_all", refuse)
    source = write_input(tmp_path / "in.jsonl", records(100))
    job = BatchJob(Task.CLASSIFY, source, tmp_path / "o.jsonl", models=tiny_bundle, chunk_rows=20)
    assert within_deadline(lambda: run_ray(job, RayOptions(actors=1))).rows == 100


@pytest.mark.parametrize("cpus", [1, 2])
def test_each_actor_runs_as_many_onnx_threads_as_it_has_cpus(
    ray_session: Any, tiny_bundle: Path, tmp_path: Path, cpus: int
) -> None:
    """Ray sets OMP_NUM_THREADS, which ONNX Runtime ignores: the session's own thread count
    must follow the CPUs Ray assigned the actor."""
    job = BatchJob(Task.CLASSIFY, tmp_path / "in.txt", tmp_path / "o.jsonl", models=tiny_bundle)
    plan = ActorPlan(actors=1, cpus_per_actor=cpus)
    actor = ray_session.remote(num_cpus=plan.actor_num_cpus)(BundleActor).remote(job)

    def threads(self: BundleActor) -> tuple[int, int]:
        options = self.predict.runner.session._session.get_session_options()
        return options.intra_op_num_threads, options.inter_op_num_threads

    try:
        assert ray_session.get(actor.__ray_call__.remote(threads), timeout=DEADLINE_S) == (cpus, 1)
    finally:
        ray_session.kill(actor)


def test_a_pool_that_cannot_fit_is_refused(ray_session: Any, tiny_bundle: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.txt", records(5))
    job = BatchJob(Task.CLASSIFY, source, tmp_path / "o.jsonl", models=tiny_bundle)
    with pytest.raises(ConfigError, match=r"--actors 3 of 1 CPU\(s\) each do not fit the cluster's 2 CPUs"):
        run_ray(job, RayOptions(actors=3))
    with pytest.raises(ConfigError, match="--cpus-per-actor 4 is more than any node of the cluster has"):
        run_ray(job, RayOptions(cpus_per_actor=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_the_cli_joins_a_running_cluster(ray_session: Any, tiny_bundle: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.csv", records(80))
    address = ray_session.get_runtime_context().gcs_address
    command = [
        sys.executable, "-m", "bertrt.cli", "batch", "classify", str(source), "--out", str(tmp_path / "o.parquet"),
        "--models", str(tiny_bundle), "--engine", "ray", "--address", address, "--actors", "1", "--id-column", "id",
        "--json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["engine"] == "ray" and report["rows"] == 80
    run_local(BatchJob(Task.CLASSIFY, source, tmp_path / "local.parquet", models=tiny_bundle, id_column="id"))
    assert_same_rows(read_output(tmp_path / "local.parquet"), read_output(tmp_path / "o.parquet"), Task.CLASSIFY)


def test_losing_a_worker_node_mid_run_still_writes_each_row_once(tiny_bundle: Path, tmp_path: Path) -> None:
    """Two 1-CPU nodes, one actor each; the worker node is removed once results flow."""
    rows = records(2000)
    source = write_input(tmp_path / "in.jsonl", rows)
    output = tmp_path / "o.parquet"
    result_file = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(TESTS / "ray_node_loss.py"), str(tiny_bundle), str(source), str(output), str(result_file)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert result["rows"] == 2000 and result["alive_nodes"] == 1
    assert result["removed"]["rows_done"] < 1000, "the node was removed too late to matter"
    written = read_output(output)
    assert [r["row"] for r in written] == list(range(1, 2001))
    assert [r["id"] for r in written] == [r["id"] for r in rows]
    local = tmp_path / "local.parquet"
    run_local(BatchJob(Task.CLASSIFY, source, local, models=tiny_bundle, id_column="id", chunk_rows=25))
    assert [r["label"] for r in written] == [r["label"] for r in read_output(local)]
