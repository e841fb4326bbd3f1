"""Resumable batch jobs: a job killed at any instant, rerun with --resume, writes exactly one
row per input row, identical to an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from batch_files import FakePredictor, read_output, records, write_input

from bertrt.batch import BatchJob, run_local
from bertrt.batch.state import JOB_FILE, partial_path
from bertrt.errors import ConfigError
from bertrt.types import Device, Precision, Task

pytestmark = pytest.mark.filterwarnings("ignore:The .* head")
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bertrt.batch.local.Predictor", FakePredictor)


def fake_job(tmp_path: Path, out: str = "out.jsonl", **options: Any) -> BatchJob:
    source = tmp_path / "in.jsonl"
    if not source.exists():
        write_input(source, records(95))
    return BatchJob(Task.CLASSIFY, source, tmp_path / out, models=tmp_path, id_column="id", chunk_rows=20, **options)


def assert_exactly_once(out: Path, expected: list[dict[str, Any]]) -> None:
    rows = read_output(out)
    assert [r["row"] for r in rows] == list(range(1, len(expected) + 1)), "duplicated or missing rows"
    assert rows == expected
    assert not partial_path(out).exists()


def interrupt_after(chunks: int) -> Any:
    def progress(done: int, total: int) -> None:
        if done >= chunks * 20:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_resume_after_an_interruption_continues_from_the_last_chunk(
    fake_model: None, tmp_path: Path, suffix: str
) -> None:
    reference = fake_job(tmp_path, f"reference{suffix}")
    run_local(reference)
    job = fake_job(tmp_path, f"out{suffix}")
    with pytest.raises(KeyboardInterrupt):
        run_local(job, progress=interrupt_after(2))
    parts = sorted(p.name for p in partial_path(job.output).iterdir())
    assert parts == [f"000000000001-000000000020{suffix}", f"000000000021-000000000040{suffix}", JOB_FILE]
    assert not job.output.exists()
    seen: list[int] = []
    report = run_local(job, resume=True, progress=lambda done, total: seen.append(done))
    assert report.resumed_rows == 40 and report.rows == 95 and seen == [40, 60, 80, 95]
    assert_exactly_once(job.output, read_output(reference.output))


def test_an_interrupted_run_is_not_discarded_without_a_flag(fake_model: None, tmp_path: Path) -> None:
    job = fake_job(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_local(job, progress=interrupt_after(1))
    with pytest.raises(ConfigError, match=r"holds an interrupted run of this output; pass --resume to continue it"):
        run_local(job)
    report = run_local(job, overwrite=True)
    assert report.resumed_rows == 0 and len(read_output(job.output)) == 95


def test_a_resume_must_ask_for_the_same_job(fake_model: None, tmp_path: Path) -> None:
    job = fake_job(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_local(job, progress=interrupt_after(1))
    with pytest.raises(
        ConfigError, match=r"Cannot resume: chunk_rows \(10\) differs from the interrupted run's \(20\)"
    ):
        run_local(BatchJob(**{**_fields(job), "chunk_rows": 10}), resume=True)
    with pytest.raises(ConfigError, match=r"Cannot resume: precision \('int8'\) differs"):
        run_local(BatchJob(**{**_fields(job), "precision": Precision.INT8}), resume=True)
    with job.input.open("a", encoding="utf-8") as handle:
        handle.write('{"id": "late", "text": "one more row"}\n')
    with pytest.raises(ConfigError, match=r"Cannot resume: input_bytes \(\d+\) changed since the interrupted run's"):
        run_local(job, resume=True)


def _fields(job: BatchJob) -> dict[str, Any]:
    return {
        name: getattr(job, name)
        for name in ("task", "input", "output", "models", "id_column", "chunk_rows", "precision")
    }


def test_resume_cleans_up_what_a_kill_leaves(fake_model: None, tmp_path: Path) -> None:
    reference = fake_job(tmp_path, "reference.jsonl")
    run_local(reference)
    job = fake_job(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_local(job, progress=interrupt_after(3))
    folder = partial_path(job.output)
    # A part being written when the process died, a part past a gap, a half-written output
    # and a half-deleted folder of a finished run: all must go.
    (folder / "000000000061-000000000080.jsonl.tmp").write_text('{"row": 61', encoding="utf-8")
    (folder / "000000000041-000000000060.jsonl").rename(folder / "000000000041-000000000060.jsonl.tmp")
    job.output.with_name("out.jsonl.tmp").write_text("half", encoding="utf-8")
    job.output.with_name("out.jsonl.partial.trash").mkdir()
    report = run_local(job, resume=True)
    assert report.resumed_rows == 40
    assert_exactly_once(job.output, read_output(reference.output))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl", "reference.jsonl"]


def test_resume_of_a_finished_job_does_nothing(fake_model: None, tmp_path: Path) -> None:
    job = fake_job(tmp_path)
    run_local(job)
    before = job.output.stat().st_mtime_ns
    report = run_local(job, resume=True)
    assert report.rows == report.resumed_rows == 95 and job.output.stat().st_mtime_ns == before


def _run_and_crash_at(job: BatchJob, crash_at: int | None) -> int:
    """Run ``job`` (resuming) in a fresh Python that dies like kill -9 just before its
    ``crash_at``-th rename or fsync; returns the child's exit status.

    A fresh interpreter, not a fork: the suite's process may hold live threads (Ray's, ONNX
    Runtime's) whose locks a forked child would inherit held and wait on for ever."""
    command = [
        sys.executable, str(TESTS / "batch_crash_child.py"),
        str(job.input), str(job.output), str(job.models), str(job.chunk_rows), str(crash_at or 0),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 137), done.stderr[-2000:]
    return done.returncode


def test_a_kill_at_every_step_of_the_protocol_is_safe(tmp_path: Path) -> None:
    """Every rename and fsync is a step of the on-disk protocol: die before each one in turn,
    resume, and the output must still hold each input row exactly once."""
    reference = fake_job(tmp_path, "reference.parquet")
    assert _run_and_crash_at(reference, None) == 0
    expected = read_output(reference.output)
    step = 0
    while True:
        step += 1
        assert step < 200, "the job never finished"
        job = fake_job(tmp_path, f"out-{step}.parquet")
        if _run_and_crash_at(job, step) == 0:
            break  # the job has fewer steps than this: every one was tried
        assert not job.output.exists() or read_output(job.output) == expected, "a partial output became visible"
        assert _run_and_crash_at(job, None) == 0
        assert_exactly_once(job.output, expected)
    # 22 steps: job.json, 5 parts and the output take 3 each (fsync, rename, directory fsync),
    # and the partial folder one rename; the run after the last one had none left to die on.
    assert step - 1 == 3 * 7 + 1


def _batch_command(models: Path, source: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "bertrt.cli", "batch", "classify", str(source), "--out", str(out),
        "--models", str(models), "--device", "cpu", "--chunk-rows", "50", *extra,
    ]  # fmt: skip


def _parts(out: Path) -> int:
    folder = partial_path(out)
    return sum(1 for p in folder.glob("*.jsonl")) if folder.exists() else 0


def _start_and_kill(command: list[str], out: Path, parts: int, sig: signal.Signals) -> subprocess.CompletedProcess[str]:
    """Start ``command``, send it ``sig`` once ``parts`` parts are written, wait for it."""
    # A test run started in the background inherits SIGINT ignored, and Python then keeps it
    # ignored: the job gets the default disposition back, as from a terminal.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while _parts(out) < parts and process.poll() is None:
        assert time.monotonic() < deadline, "the job wrote no parts in time"
        time.sleep(0.01)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def test_kill_9_mid_run_then_resume_writes_each_row_once(tiny_bundle: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.txt", records(3000))
    reference = tmp_path / "reference.jsonl"
    run_local(BatchJob(Task.CLASSIFY, source, reference, models=tiny_bundle, device=Device.CPU, chunk_rows=50))
    out = tmp_path / "out.jsonl"
    for parts in (3, 20):
        done = _start_and_kill(_batch_command(tiny_bundle, source, out, "--resume"), out, parts, signal.SIGKILL)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        assert not out.exists() and _parts(out) >= parts
    done = subprocess.run(
        _batch_command(tiny_bundle, source, out, "--resume"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "written before the resume" in done.stdout
    rows, expected = read_output(out), read_output(reference)
    assert [r["row"] for r in rows] == list(range(1, 3001))
    assert [r["label"] for r in rows] == [r["label"] for r in expected]
    assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in expected], rel=1e-6)
    assert not partial_path(out).exists()


def test_ctrl_c_says_how_to_resume(tiny_bundle: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.txt", records(3000))
    out = tmp_path / "out.jsonl"
    done = _start_and_kill(_batch_command(tiny_bundle, source, out), out, 2, signal.SIGINT)
    assert done.returncode == 130, done.stderr[-2000:]
    assert (
        f"interrupted: the rows written so far are in {partial_path(out)}; rerun the same command with --resume"
        in done.stderr
    )
    done = subprocess.run(
        _batch_command(tiny_bundle, source, out, "--resume"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["row"] for r in read_output(out)] == list(range(1, 3001))
