"""What the systems are timed on: the bundle's three models, read from their manifests.

Every system loads the same files: the ONNX variant (bertrt, plain ONNX Runtime,
optimum) or the PyTorch weights it was exported from (``pytorch/``), with the
tokenizer, truncation length and QA stride the export validated.

Example::

    models = bundle_models(Path("models/minilm"))
    models[Task.CLASSIFY].onnx_file(Precision.FP32)   # .../classifier/model.onnx
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bertrt.bundle import Bundle
from bertrt.errors import BundleError
from bertrt.manifest import TORCH_DIR
from bertrt.types import Precision, Task


@dataclass(frozen=True)
class ModelInfo:
    """One model of the bundle, as the benchmark systems need it."""

    task: Task
    directory: Path
    variants: dict[Precision, str]
    max_length: int
    doc_stride: int | None
    labels: tuple[str, ...] | None
    vocab_size: int

    @property
    def torch_dir(self) -> Path:
        """The PyTorch weights the ONNX files were exported from."""
        return self.directory / TORCH_DIR

    def onnx_file(self, precision: Precision) -> Path:
        """The ONNX file of ``precision``; BundleError naming the variants present otherwise."""
        if precision not in self.variants:
            present = ", ".join(p.value for p in self.variants)
            raise BundleError(
                f"{self.directory} has no {precision.value} variant (it has {present}); "
                f"re-export with --precision {precision.value}."
            )
        return self.directory / self.variants[precision]


def bundle_models(path: Path) -> dict[Task, ModelInfo]:
    """The bundle's models by task (no session is created, no checksum is computed)."""
    bundle = Bundle(path)
    models = {}
    # The benchmark's workloads are the built-in tasks'; other models of a bundle are not timed.
    for task in (t for t in bundle.tasks if isinstance(t, Task)):
        manifest = bundle.model_manifest(task)
        directory = bundle.model_dir(task)
        models[task] = ModelInfo(
            task=task,
            directory=directory,
            variants={p: v.file for p, v in manifest.variants.items()},
            max_length=manifest.max_length,
            doc_stride=manifest.doc_stride,
            labels=manifest.labels,
            vocab_size=read_vocab_size(directory),
        )
    return models


def read_vocab_size(directory: Path) -> int:
    """``vocab_size`` from a model folder's ``config.json``."""
    try:
        return int(json.loads((directory / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{directory}/config.json names no vocab_size ({exc!r}); re-export the bundle.") from exc
