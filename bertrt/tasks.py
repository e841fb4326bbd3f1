"""The task registry: what the runtime knows about each task, in one frozen table.

:func:`bertrt.load` builds a row's ``runner`` for the model in the row's ``folder``, a runner
refuses a graph without the row's ``outputs`` and warns with the row's ``training_hint`` when
the head was never trained, and the export stage writes each model into its row's folder.
Every module reads :data:`TASKS` through :func:`task_spec`, :func:`task_specs` and
:func:`task_names`, when it needs a row, never from a copy taken at import.
The export stage keeps the torch-side facts of each task (model class, exporter task, how
its head is trained and checked, recipe section) in its companion table,
:data:`bertrt.export.tasks.EXPORTS`.

A new task is a row here and one there, plus its runner class and its head code. It needs no
:class:`~bertrt.types.Task` member: a task is known by its name.

Example::

    spec = task_spec("classify")
    spec.folder, spec.runner.__name__, spec.outputs   # ('classifier', 'Classifier', ('logits',))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from bertrt.classify import LOGITS, Classifier
from bertrt.embed import HIDDEN, Embedder
from bertrt.errors import ConfigError
from bertrt.precision import CLASSIFY_BUDGET, EMBED_BUDGET, QA_BUDGET, Budget
from bertrt.qa import END, START, QuestionAnswerer
from bertrt.runner import TaskRunner
from bertrt.types import Task


class Head(StrEnum):
    """What sits on the encoder, which decides what a model's manifest records and what its
    inputs are."""

    ENCODER = "encoder"  # no head: token vectors and the pooled [CLS]
    LABELS = "labels"  # scores over labels (per text or per token) that the manifest names
    SPAN = "span"  # start and end scores over a context, read in windows (the manifest's doc_stride)


@dataclass(frozen=True)
class TaskSpec:
    """One task as the runtime sees it.

    ``task`` is its name; ``folder`` the model folder inside a bundle; ``runner`` the class
    that serves it; ``outputs`` the graph outputs that runner reads; ``head`` the kind of head;
    ``training_hint`` completes "its outputs mean nothing; ..." for an untrained head;
    ``int8_budget`` is what an int8 file's recorded evaluation must show for
    ``precision="auto"`` to serve it on the CPU (None: auto never picks int8 for the task).
    """

    task: str
    folder: str
    runner: type[TaskRunner]
    outputs: tuple[str, ...]
    head: Head
    training_hint: str = "re-export with training enabled"
    int8_budget: Budget | None = None


TASKS: Mapping[str, TaskSpec] = MappingProxyType({
    spec.task: spec
    for spec in (
        TaskSpec(Task.EMBED, "embedder", Embedder, (HIDDEN,), Head.ENCODER, int8_budget=EMBED_BUDGET),
        TaskSpec(
            Task.CLASSIFY,
            "classifier",
            Classifier,
            (LOGITS,),
            Head.LABELS,
            "re-export with a recipe that fine-tunes the classifier",
            CLASSIFY_BUDGET,
        ),
        TaskSpec(
            Task.QA,
            "qa",
            QuestionAnswerer,
            (START, END),
            Head.SPAN,
            "re-export with --qa-data SQUAD.json to train it",
            QA_BUDGET,
        ),
    )
})


def task_spec(task: str) -> TaskSpec:
    """The registry row of ``task`` (a :class:`~bertrt.types.Task` or a task's name).

    >>> task_spec("qa").folder
    'qa'
    """
    spec = TASKS.get(task)
    if spec is None:
        raise ConfigError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    return spec


def task_names() -> tuple[str, ...]:
    """The name of every task in the registry."""
    return tuple(TASKS)


def task_specs() -> tuple[TaskSpec, ...]:
    """Every row, in the registry's order (the order a bundle's models are built in)."""
    return tuple(TASKS.values())
