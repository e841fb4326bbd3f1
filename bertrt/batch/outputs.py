"""What each task writes: its output columns, and how a runner's results become them.

Every output row has ``row`` (its 1-based input row number), ``id`` (the id column's
value, or the row number) and ``error`` (null, or why the row could not be run); then the
task's own columns, null on an error row:

========  =============================================================
embed     ``embedding`` (float32 list), ``truncated``
classify  ``label``, ``score`` (its probability), ``truncated``
qa        ``answer`` (the best span), ``start``, ``end`` (character offsets), ``score``
========  =============================================================

Results travel as :data:`Columns`: column name -> one plain Python value per row, the shape
both writers and Ray Data's Arrow blocks take.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from bertrt.batch.job import BatchJob
from bertrt.classify import Classifier
from bertrt.embed import Embedder
from bertrt.qa import QuestionAnswerer
from bertrt.runner import TaskRunner
from bertrt.types import Task

Columns = dict[str, list[Any]]
Fields = tuple[str, ...]
ROW, ID, ERROR = "row", "id", "error"


@dataclass(frozen=True)
class Column:
    """An output column: its name and kind (``int``, ``float``, ``str``, ``bool``,
    ``vector`` for a float32 list, or ``id``, whose type follows the ids)."""

    name: str
    kind: str


COMMON_COLUMNS = (Column(ROW, "int"), Column(ID, "id"), Column(ERROR, "str"))


def _embed(runner: TaskRunner, fields: Sequence[Fields], job: BatchJob) -> list[dict[str, Any]]:
    results = cast(Embedder, runner)(
        [f[0] for f in fields], pooling=job.pooling, normalize=job.normalize, token_embeddings=False
    )
    return [{"embedding": r.vector.tolist(), "truncated": r.truncated} for r in results]


def _classify(runner: TaskRunner, fields: Sequence[Fields], job: BatchJob) -> list[dict[str, Any]]:
    results = cast(Classifier, runner)([f[0] for f in fields])
    return [{"label": r.label, "score": r.score, "truncated": r.truncated} for r in results]


def _qa(runner: TaskRunner, fields: Sequence[Fields], job: BatchJob) -> list[dict[str, Any]]:
    results = cast(QuestionAnswerer, runner)([f[0] for f in fields], [f[1] for f in fields])
    best = [r.best for r in results]
    # A context with no readable token has no answer: its row is not an error, just empty.
    return [
        {"answer": b.text, "start": b.start, "end": b.end, "score": b.score} if b else dict.fromkeys(QA_FIELDS)
        for b in best
    ]


@dataclass(frozen=True)
class TaskOutput:
    """A task's own output columns and the function that fills them from a runner."""

    columns: tuple[Column, ...]
    run: Callable[[TaskRunner, Sequence[Fields], BatchJob], list[dict[str, Any]]]


TASK_OUTPUTS: dict[Task, TaskOutput] = {
    Task.EMBED: TaskOutput((Column("embedding", "vector"), Column("truncated", "bool")), _embed),
    Task.CLASSIFY: TaskOutput(
        (Column("label", "str"), Column("score", "float"), Column("truncated", "bool")), _classify
    ),
    Task.QA: TaskOutput(
        (Column("answer", "str"), Column("start", "int"), Column("end", "int"), Column("score", "float")), _qa
    ),
}
QA_FIELDS = tuple(c.name for c in TASK_OUTPUTS[Task.QA].columns)


def output_columns(task: Task) -> tuple[Column, ...]:
    """Every column of ``task``'s output file, in order."""
    return COMMON_COLUMNS + TASK_OUTPUTS[task].columns
