"""String enums shared by the runtime, the export stage and the CLI."""

from __future__ import annotations

from enum import Enum


class Task(str, Enum):
    """What a model in a bundle does."""

    EMBED = "embed"
    CLASSIFY = "classify"
    QA = "qa"


class Precision(str, Enum):
    """Numeric precision of an exported ONNX file."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


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
