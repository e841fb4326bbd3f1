"""`bertrt batch` on the local engine: every input kind, both output formats, bad rows,
clear errors, streaming, and the output appearing only when complete."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batch_files import qa_records, read_output, records, write_input
from typer.testing import CliRunner

import bertrt
from bertrt.batch import BadRowError, BatchJob, run_local
from bertrt.batch.progress import ProgressBar
from bertrt.batch.readers import count_rows, read_chunks
from bertrt.batch.state import partial_path
from bertrt.cli import app
from bertrt.errors import ConfigError, InputError
from bertrt.types import Task

pytestmark = pytest.mark.filterwarnings("ignore:The .* head")


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> bertrt.Bundle:
    return bertrt.load(tiny_bundle, device="cpu")


def job(tiny_bundle: Path, task: Task, source: Path, out: Path, **options: Any) -> BatchJob:
    return BatchJob(task, source, out, models=tiny_bundle, device=bertrt.Device.CPU, **options)


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".txt"])
def test_every_input_kind_classifies_like_the_library(
    tiny_bundle: Path, bundle: bertrt.Bundle, tmp_path: Path, suffix: str
) -> None:
    rows = records(130)
    source = write_input(tmp_path / f"in{suffix}", rows)
    id_column = None if suffix == ".txt" else "id"
    report = run_local(
        job(tiny_bundle, Task.CLASSIFY, source, tmp_path / "out.jsonl", id_column=id_column, chunk_rows=50)
    )
    out = read_output(tmp_path / "out.jsonl")
    expected = bundle.classifier([row["text"] for row in rows])
    assert report.rows == len(out) == 130 and report.bad_rows == 0
    assert [o["row"] for o in out] == list(range(1, 131))
    assert [o["id"] for o in out] == ([r["id"] for r in rows] if id_column else list(range(1, 131)))
    assert [o["label"] for o in out] == [e.label for e in expected]
    np.testing.assert_allclose([o["score"] for o in out], [e.score for e in expected], rtol=1e-5)
    assert [o["truncated"] for o in out] == [e.truncated for e in expected] and any(o["truncated"] for o in out)
    assert all(o["error"] is None for o in out)
    assert not partial_path(tmp_path / "out.jsonl").exists()


def test_embeddings_are_a_float32_list_column(tiny_bundle: Path, bundle: bertrt.Bundle, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = records(70)
    source = write_input(tmp_path / "in.jsonl", rows)
    out = tmp_path / "vectors.parquet"
    run_local(job(tiny_bundle, Task.EMBED, source, out, id_column="id", chunk_rows=32, normalize=True))
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert table.column_names == ["row", "id", "error", "embedding", "truncated"]
    expected = bundle.embedder([row["text"] for row in rows], normalize=True)
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(vectors, np.stack([e.vector for e in expected]), atol=1e-5)
    assert table.column("id").to_pylist() == [row["id"] for row in rows]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_qa_answers_like_the_library(tiny_bundle: Path, bundle: bertrt.Bundle, tmp_path: Path, suffix: str) -> None:
    rows = qa_records(30)
    source = write_input(tmp_path / f"qa{suffix}", rows)
    run_local(job(tiny_bundle, Task.QA, source, tmp_path / "answers.jsonl", id_column="id", chunk_rows=8))
    out = read_output(tmp_path / "answers.jsonl")
    expected = bundle.qa([r["question"] for r in rows], [r["context"] for r in rows])
    assert [o["answer"] for o in out] == [e.best.text for e in expected if e.best]
    assert [(o["start"], o["end"]) for o in out] == [(e.best.start, e.best.end) for e in expected if e.best]
    for o, row in zip(out, rows, strict=True):
        assert row["context"][o["start"] : o["end"]] == o["answer"]
    # CSV ids are text; Parquet keeps the integer column's type.
    assert [o["id"] for o in out] == [str(r["id"]) if suffix == ".csv" else r["id"] for r in rows]


def test_bad_rows_become_error_rows_with_their_row_number(tiny_bundle: Path, tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "a", "text": "i love paris"}),
        json.dumps({"id": "b", "text": ""}),
        json.dumps({"id": "c", "text": 7}),
        json.dumps({"id": "d"}),
        "{not json",
        "",
        json.dumps(["a", "list"]),
        json.dumps({"id": 4.5, "text": "fine text"}),
        json.dumps({"text": "no id here"}),
        json.dumps({"id": 9, "text": "the film was great"}),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = run_local(job(tiny_bundle, Task.CLASSIFY, source, tmp_path / "out.jsonl", id_column="id", chunk_rows=3))
    out = read_output(tmp_path / "out.jsonl")
    assert [o["row"] for o in out] == list(range(1, 11))
    assert [o["id"] for o in out] == ["a", "b", "c", "d", None, None, None, None, None, 9]
    errors = {o["row"]: o["error"] for o in out if o["error"]}
    assert errors == {
        2: "'text' is empty",
        3: "'text' is a number, not a string",
        4: "missing 'text' field",
        5: "the line is not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        6: "the line is empty",
        7: "the line is an array, not a JSON object",
        8: "'id' is 4.5; ids must be strings or integers",
        9: "missing 'id' field",
    }
    assert report.bad_rows == 8 and report.first_bad == sorted(errors.items())
    assert all(o["label"] is None for o in out if o["error"]) and out[0]["label"] and out[-1]["label"]


def test_strict_stops_at_the_first_bad_row_and_leaves_nothing(tiny_bundle: Path, tmp_path: Path) -> None:
    rows = records(40)
    rows[25]["text"] = "   "
    source = write_input(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"
    with pytest.raises(BadRowError, match=r"in.csv row 26: 'text' is empty; fix the row, or drop --strict"):
        run_local(job(tiny_bundle, Task.CLASSIFY, source, out, strict=True, chunk_rows=10))
    assert list(tmp_path.iterdir()) == [source]


def test_a_question_too_long_for_the_window_fails_its_row_only(tiny_bundle: Path, tmp_path: Path) -> None:
    rows = qa_records(6)
    rows[2]["question"] = "what is the capital of france " * 20
    source = write_input(tmp_path / "qa.jsonl", rows)
    report = run_local(job(tiny_bundle, Task.QA, source, tmp_path / "a.jsonl"))
    out = read_output(tmp_path / "a.jsonl")
    assert report.bad_rows == 1 and "longer than the model window" in out[2]["error"]
    assert all(o["answer"] for i, o in enumerate(out) if i != 2)


def test_ids_keep_their_json_type_and_parquet_unifies_them(tiny_bundle: Path, tmp_path: Path) -> None:
    rows = [{"id": i if i % 2 else f"s{i}", "text": "i love paris"} for i in range(6)]
    source = write_input(tmp_path / "in.jsonl", rows)
    for out in (tmp_path / "o.jsonl", tmp_path / "o.parquet"):
        run_local(job(tiny_bundle, Task.CLASSIFY, source, out, id_column="id", chunk_rows=2))
    assert [o["id"] for o in read_output(tmp_path / "o.jsonl")] == [r["id"] for r in rows]
    assert [o["id"] for o in read_output(tmp_path / "o.parquet")] == [str(r["id"]) for r in rows]


def test_an_empty_input_writes_an_empty_output(tiny_bundle: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("", encoding="utf-8")
    report = run_local(job(tiny_bundle, Task.EMBED, source, tmp_path / "o.parquet"))
    assert report.rows == 0 and read_output(tmp_path / "o.parquet") == []


def test_lines_split_as_str_splitlines_does(tiny_bundle: Path, tmp_path: Path) -> None:
    """Ray Data's read_text splits with str.splitlines; the local reader must cut the same rows."""
    content = "\ufeffi love paris\r\nthe film\rwhat a waste\u2028of time\x85the plot\n\nlast line without newline"
    source = tmp_path / "in.txt"
    source.write_bytes(content.encode("utf-8"))
    run_local(job(tiny_bundle, Task.CLASSIFY, source, tmp_path / "o.jsonl"))
    out = read_output(tmp_path / "o.jsonl")
    assert len(out) == len(content.splitlines()) == 7
    assert out[5]["error"] == "the line is empty" and out[0]["error"] is None


def test_output_appears_only_when_complete(tiny_bundle: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.txt", records(60))
    out = tmp_path / "o.jsonl"
    seen: list[tuple[bool, int]] = []

    def progress(done: int, total: int) -> None:
        seen.append((out.exists(), len(list(partial_path(out).glob("*.jsonl")))))

    run_local(job(tiny_bundle, Task.CLASSIFY, source, out, chunk_rows=20), progress=progress)
    assert [exists for exists, _ in seen] == [False] * 4 and [parts for _, parts in seen] == [0, 1, 2, 3]
    assert out.exists() and len(read_output(out)) == 60


def test_an_existing_output_is_kept_unless_overwrite(tiny_bundle: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.txt", records(5))
    out = tmp_path / "o.jsonl"
    out.write_text("precious\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        run_local(job(tiny_bundle, Task.CLASSIFY, source, out))
    assert out.read_text() == "precious\n"
    run_local(job(tiny_bundle, Task.CLASSIFY, source, out), overwrite=True)
    assert len(read_output(out)) == 5


def test_the_reader_streams_in_chunks(tmp_path: Path) -> None:
    """Memory does not grow with the file: reading a 60 MB input holds one chunk at a time."""
    source = tmp_path / "big.jsonl"
    line = json.dumps({"id": "x", "text": "the film was great " * 150}) + "\n"
    with source.open("w", encoding="utf-8") as handle:
        for _ in range(20_000):
            handle.write(line)
    big = BatchJob(Task.CLASSIFY, source, tmp_path / "o.jsonl", chunk_rows=100)
    tracemalloc.start()
    try:
        assert count_rows(big) == 20_000
        chunks = sum(1 for _ in read_chunks(big))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert chunks == 200
    assert peak < 5 * 1024 * 1024, f"reading held {peak / 1e6:.1f} MB"  # the file is 60 MB


@pytest.mark.parametrize(
    ("name", "content", "args", "message"),
    [
        ("in.jsonl", None, [], "does not exist; pass the path of the file to process."),
        (
            "in.xml",
            "<a/>",
            [],
            "INPUT in.xml is not a file bertrt batch can read; name a .jsonl, .csv, .parquet or .txt file.",
        ),
        ("in.csv", "title,body\nx,y\n", [], "in.csv has no column 'text' (it has: title, body); pass --text-column"),
        ("in.csv", "", [], "in.csv is empty; a CSV input needs a header row"),
        ("in.csv", "text,id\nfine,1\nmore,2,3\n", [], "in.csv line 3 has 3 fields but the header has 2; fix that line"),
        (
            "in.csv",
            "text\nfine\n",
            ["--id-column", "doc"],
            "in.csv has no column 'doc' (it has: text); pass --id-column",
        ),
        ("in.txt", b"fine\n\xff\xfe\n", [], "in.txt is not valid UTF-8 (line 2); convert the file to UTF-8."),
        ("in.txt", "fine\n", ["--id-column", "id"], "A .txt input has no columns, so --id-column cannot apply"),
        ("in.parquet", "not parquet", [], "in.parquet is not a Parquet file"),
        (
            "in.jsonl",
            "{}\n",
            ["--out", "{dir}/out.csv"],
            "--out out.csv is not a file bertrt batch can write; name a .jsonl or .parquet file.",
        ),
        ("in.jsonl", "{}\n", ["--chunk-rows", "20000"], "chunk_rows 20,000 is more than a runner takes in one call"),
    ],
)
def test_bad_inputs_fail_with_one_sentence(
    tiny_bundle: Path, tmp_path: Path, name: str, content: str | bytes | None, args: list[str], message: str
) -> None:
    source = tmp_path / name
    if isinstance(content, bytes):
        source.write_bytes(content)
    elif content is not None:
        source.write_text(content, encoding="utf-8")
    args = [a.replace("{dir}", str(tmp_path)) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "out.jsonl")]
    code, stdout, stderr = invoke("batch", "classify", str(source), *out, "--models", str(tiny_bundle), *args)
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ([name] if content is not None else [])


def test_parquet_columns_must_hold_strings(tiny_bundle: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.parquet", [{"text": 1, "id": 1.5}])
    with pytest.raises(InputError, match="Column 'text' of in.parquet holds int64, not strings"):
        run_local(job(tiny_bundle, Task.CLASSIFY, source, tmp_path / "o.jsonl"))
    source = write_input(tmp_path / "in.parquet", [{"text": "fine", "id": 1.5}])
    with pytest.raises(InputError, match="Id column 'id' of in.parquet holds double"):
        run_local(job(tiny_bundle, Task.CLASSIFY, source, tmp_path / "o.jsonl", id_column="id"))


def test_qa_needs_columns_not_lines(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="qa needs a question and a context per row"):
        BatchJob(Task.QA, tmp_path / "in.txt", tmp_path / "o.jsonl")


def test_cli_prints_a_summary_and_the_bad_rows(tiny_bundle: Path, tmp_path: Path) -> None:
    rows = records(30)
    rows[4]["text"] = ""
    source = write_input(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.parquet"
    code, stdout, stderr = invoke("batch", "embed", str(source), "--out", str(out), "--models", str(tiny_bundle),
                                  "--id-column", "id", "--chunk-rows", "8")  # fmt: skip
    assert code == 0, stderr
    assert stdout.startswith(f"wrote 30 rows to {out}: 1 bad; 30 rows in ") and "rows/s, local engine)" in stdout
    assert "bad row 5: 'text' is empty" in stderr
    code, stdout, _ = invoke("batch", "embed", str(source), "--out", str(out), "--models", str(tiny_bundle),
                             "--overwrite", "--json")  # fmt: skip
    report = json.loads(stdout)
    assert code == 0 and report["rows"] == 30 and report["bad_rows"] == 1 and report["engine"] == "local"


def test_batch_help_explains_every_option() -> None:
    result = CliRunner().invoke(app, ["batch", "--help"], env={"COLUMNS": "200"})
    code, out = result.exit_code, result.stdout
    assert code == 0
    for option in ("--out", "--engine", "--resume", "--strict", "--text-column", "--id-column", "--models",
                   "--precision", "--device", "--actors", "--cpus-per-actor", "--address", "--chunk-rows"):  # fmt: skip
        assert option in out


class _Terminal:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_bar_shows_rows_per_second() -> None:
    terminal = _Terminal()
    bar = ProgressBar("classify", stream=terminal, min_interval=0)  # type: ignore[arg-type]
    bar(0, 1000)
    bar(500, 1000)
    line = bar.line(500, 1000, seconds=2.0)
    assert line.startswith("classify [############------------] 500/1,000 rows  50%  250 rows/s  0:02 left")
    bar(1000, 1000)
    bar.close()
    assert terminal.text.count("\r") == 2 and terminal.text.endswith("\n") and "1,000/1,000 rows 100%" in terminal.text


def test_actor_pools_are_planned_to_fit_the_cluster() -> None:
    from bertrt.batch.ray_engine import READ_CPUS, ActorPlan, plan_actors

    assert plan_actors([2.0], None, 1).actors == 2
    assert plan_actors([16.0, 16.0], None, 4).actors == 8
    assert plan_actors([2.0, 3.0], None, 2).actors == 2  # node by node: 1 + 1
    # Every node full of actors keeps a read task's share free.
    plan = plan_actors([2.0], None, 1)
    assert plan.actors * plan.actor_num_cpus + READ_CPUS <= 2.0
    with pytest.raises(
        ConfigError, match=r"--actors 5 of 1 CPU\(s\) each do not fit the cluster's 4 CPUs; pass --actors 4"
    ):
        plan_actors([2.0, 2.0], 5, 1)
    with pytest.raises(ConfigError, match="--cpus-per-actor 3 is more than any node of the cluster has"):
        plan_actors([2.0, 2.0], None, 3)
    # --device cuda: an actor per GPU at most, each given one by Ray.
    assert plan_actors([8.0, 8.0], None, 2, node_gpus=[1.0, 2.0]) == ActorPlan(3, 2, 1)
    with pytest.raises(ConfigError, match="--device cuda needs a GPU on a node of the Ray cluster"):
        plan_actors([8.0], None, 1, node_gpus=[0.0])


def test_the_ray_engine_says_what_to_install_without_ray(tiny_bundle: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    source = write_input(tmp_path / "in.txt", records(3))
    probe = (
        "import sys; sys.modules['ray'] = None\n"  # as if ray were not installed
        "from bertrt.cli import main\n"
        f"sys.argv = ['bertrt', 'batch', 'classify', {str(source)!r}, '--out', {str(tmp_path / 'o.jsonl')!r},"
        f" '--models', {str(tiny_bundle)!r}, '--engine', 'ray']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "error: --engine ray needs Ray Data; pip install 'bertrt[ray]'.\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_resume_is_for_the_local_engine(tiny_bundle: Path, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.txt", records(3))
    code, _, stderr = invoke("batch", "classify", str(source), "--out", str(tmp_path / "o.jsonl"),
                             "--engine", "ray", "--resume")  # fmt: skip
    assert code == 2 and "--resume works with the local engine only" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "127.0.0.1:9"], "No Ray cluster answers at 127.0.0.1:9 (Connection refused); check --address"),
        (["--precision", "int8"], "has no int8 variant (it has: fp32); choose one of those with --precision"),
    ],
)
def test_the_ray_engine_fails_fast_before_starting_ray(
    fp32_only_bundle: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    source = write_input(tmp_path / "in.txt", records(3))
    code, _, stderr = invoke("batch", "classify", str(source), "--out", str(tmp_path / "o.jsonl"),
                             "--models", str(fp32_only_bundle), "--engine", "ray", *args)  # fmt: skip
    assert code == 2 and stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_an_actors_error_reaches_the_driver_as_one_sentence() -> None:
    """Ray keeps only the text of an error raised in an actor's constructor."""
    from bertrt.batch.ray_engine import _bertrt_cause

    text = "The actor died because of an error raised in its creation task\n  File ...\n"
    error = _bertrt_cause(RuntimeError(text + "bertrt.errors.BundleError: /m is not a folder; run `bertrt export`.\n"))
    assert isinstance(error, bertrt.BundleError) and str(error) == "/m is not a folder; run `bertrt export`."
    assert _bertrt_cause(RuntimeError("a Ray failure of its own")) is None


def test_a_job_whose_rows_do_not_match_its_input_writes_nothing(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last guard of one row per input row: the rows run must be the rows counted."""
    source = write_input(tmp_path / "in.txt", records(30))
    monkeypatch.setattr("bertrt.batch.local.count_rows", lambda job: 31)  # as if a row were added mid-job
    with pytest.raises(InputError, match=r"produced 30 rows for the 31 rows of in.txt .*; nothing was written"):
        run_local(job(tiny_bundle, Task.CLASSIFY, source, tmp_path / "o.jsonl", chunk_rows=10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
