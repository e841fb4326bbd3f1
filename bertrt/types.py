"""String enums shared by the runtime, the export stage and the CLI."""

from __future__ import annotations

from enum import Enum, StrEnum


class Task(StrEnum):
    """The tasks built into bertrt, by name: ``Task.QA == "qa"``.

    A task is known by its name, and :data:`bertrt.tasks.TASKS` (not this enum) decides which
    tasks exist: a task added there needs no member here. So code that handles any task
    takes its name as a ``str``; a member is a ``str`` that compares, hashes and prints as its
    name (a ``StrEnum``, so ``f"{task}"`` reads ``qa`` for a member and a plain name alike),
    and manifests read back a built-in task as its member (:func:`task_named`).
    """

    EMBED = "embed"
    CLASSIFY = "classify"
    QA = "qa"


class Precision(str, Enum):
    """Numeric precision of an exported ONNX file."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class PrecisionChoice(str, Enum):
    """The precision a caller asks for: one variant, or ``auto``, which picks per model the
    fastest variant whose recorded validation meets its task's budget on this device
    (:mod:`bertrt.precision`). ``PrecisionChoice.INT8 == Precision.INT8``: both are the str
    ``"int8"``."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    AUTO = "auto"


class Device(str, Enum):
    """Where inference runs. ``auto`` takes CUDA only where its provider really loads."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Pooling(str, Enum):
    """How token embeddings become one sentence vector."""

    CLS = "cls"
    MEAN = "mean"
    POOLER = "pooler"


def task_named(name: str) -> str:
    """The :class:`Task` member called ``name``, or ``name`` itself for a task that is not
    built in (one added to :data:`bertrt.tasks.TASKS`).

    >>> task_named("qa") is Task.QA, task_named("tag")
    (True, 'tag')
    """
    try:
        return Task(name)
    except ValueError:
        return name
