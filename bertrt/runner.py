"""The base every task runner shares: load a verified model folder, open a session and a
tokenizer, and run texts through them batch by batch.

Task classes (:mod:`bertrt.embed`, :mod:`bertrt.classify`, :mod:`bertrt.qa`) add only their
pre- and post-processing. A runner is safe to call from many threads at once: the session
keeps per-thread IO bindings and the tokenizer is configured once, then only read.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np

from bertrt.batching import run_in_batches
from bertrt.errors import BundleError
from bertrt.model_files import ModelFiles, open_model
from bertrt.options import RuntimeOptions, coerce_enum
from bertrt.session import OrtSession
from bertrt.tokenizer import Encoding, TextTokenizer
from bertrt.types import Device, Precision

if TYPE_CHECKING:
    from bertrt.tasks import TaskSpec

R = TypeVar("R")


class TaskRunner:
    """Shared loading and batched execution for one model folder of the runner's ``task``.

    ``device`` is ``auto`` (CUDA where it really runs), ``cpu`` or ``cuda``; ``precision``
    picks the ONNX variant (``fp32`` by default). Checksums are verified before the session
    is created. What the task needs (its graph outputs, the hint for an untrained head) is
    read from its row in :data:`bertrt.tasks.TASKS`.
    """

    task: ClassVar[str]

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: Device | str = Device.AUTO,
        precision: Precision | str = Precision.FP32,
        options: RuntimeOptions | None = None,
    ) -> None:
        self.options = options or RuntimeOptions()
        self.spec = _task_spec(self.task)
        self.model: ModelFiles = open_model(
            Path(model_dir), self.task, coerce_enum(Precision, precision, "precision")
        )
        self.manifest = self.model.manifest
        self.session = OrtSession(self.model.onnx_path, coerce_enum(Device, device, "device"), self.options)
        missing = [name for name in self.spec.outputs if name not in self.session.outputs]
        if missing:
            raise BundleError(
                f"{self.model.onnx_path} lacks the output(s) {', '.join(missing)} a {self.task} "
                f"model needs (it has {', '.join(self.session.outputs)}); re-export the bundle."
            )
        self.tokenizer = TextTokenizer.from_dir(self.model.directory, self.manifest.max_length)
        if not self.manifest.trained:
            warnings.warn(
                f"The {self.task} head in {self.model.directory} was never trained, so "
                f"its outputs mean nothing; {self.spec.training_hint}.",
                UserWarning,
                stacklevel=2,
            )
        self._after_load()

    def _after_load(self) -> None:
        """Task-specific setup once the model, session and tokenizer are loaded."""

    @property
    def provider(self) -> str:
        """The ONNX Runtime execution provider that runs this model."""
        return self.session.provider

    def _run_texts(
        self,
        texts: Sequence[str],
        postprocess: Callable[[Mapping[str, np.ndarray], list[Encoding]], list[R]],
    ) -> list[R]:
        """Tokenize, batch by length, run, and post-process each batch; caller's order."""
        encodings = self.tokenizer.encode(texts)

        def run_batch(batch: list[Encoding]) -> list[R]:
            outputs = self.session.run(self.tokenizer.pad(batch).feeds())
            return postprocess(outputs, batch)

        return run_in_batches(
            encodings,
            [len(e) for e in encodings],
            self.options.batch_size,
            run_batch,
            self.options.group_by_length,
        )


def _task_spec(task: str) -> TaskSpec:
    # The registry names the runner classes, so it can only be read once they exist.
    from bertrt.tasks import task_spec

    return task_spec(task)
