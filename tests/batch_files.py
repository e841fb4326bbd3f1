"""Input files for the batch-job tests, in every format, a reader for their outputs, and a
model stand-in for the tests of the job's on-disk state."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bertrt.batch import BatchJob
    from bertrt.batch.outputs import Columns
    from bertrt.batch.rows import Row

SENTENCE = "the film was great and i love paris but the plot is dull what a waste of time capital france"
WORDS = SENTENCE.split()
CONTEXT = "paris is the capital of france. the immune system is a body system which has cells."


def texts(n: int, seed: int = 0) -> list[str]:
    """``n`` texts of 1 to 90 words (longer than the tiny models' 64-token window at times),
    so length grouping reorders them inside a chunk."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 3, 8, 20, 90]))) for _ in range(n)]


def records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows with a string id and a text."""
    return [{"id": f"doc-{i}", "text": text} for i, text in enumerate(texts(n, seed))]


def qa_records(n: int) -> list[dict[str, Any]]:
    """``n`` QA rows whose context is long enough to need several windows at times."""
    questions = ["what is the capital?", "what has cells?", "where is paris?", "what is the system?"]
    return [{"id": i, "question": questions[i % 4], "context": CONTEXT * (1 + i % 3)} for i in range(n)]


def write_input(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` in the format ``path``'s suffix names (a .txt gets each row's text)."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif suffix == ".txt":
        path.write_text("".join(row["text"] + "\n" for row in rows), encoding="utf-8")
    elif suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)
    else:
        raise ValueError(suffix)
    return path


def read_output(path: Path) -> list[dict[str, Any]]:
    """The rows of a batch job's .jsonl or .parquet output."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()  # type: ignore[no-any-return]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class FakePredictor:
    """A model stand-in with results that depend on the row only, for the state tests."""

    def __init__(self, job: BatchJob, options: Any = None) -> None:
        pass

    def __call__(self, rows: Sequence[Row]) -> Columns:
        texts = [row.fields[0] if row.fields else "" for row in rows]
        return {
            "id": [row.id for row in rows],
            "error": [row.error for row in rows],
            "label": [f"L{len(text) % 3}" if text else None for text in texts],
            "score": [len(text) / 100 if text else None for text in texts],
            "truncated": [False if text else None for text in texts],
        }
