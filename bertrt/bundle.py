"""A whole exported bundle: its manifest and one runner per model, loaded on first use.

Runners are created lazily: a service that only classifies never pays for the QA model's
session, checksum pass or memory. The first access to ``bundle.classifier`` (from any
thread) loads it once, under a lock; later accesses return the same runner. Call
:meth:`Bundle.load_all` to load everything up front (fail fast at start-up).

Example::

    import bertrt
    bundle = bertrt.load("models/minilm", device="auto")
    bundle.classifier("I love Paris")[0].label
    bundle.embedder("I love Paris", pooling="pooler")[0].vector
    bundle.qa.answer("Where?", "In Paris.").best
"""

from __future__ import annotations

import threading
from pathlib import Path

from bertrt.classify import Classifier
from bertrt.embed import Embedder
from bertrt.errors import BundleError
from bertrt.manifest import BundleManifest, ModelManifest
from bertrt.options import RuntimeOptions, coerce_enum
from bertrt.qa import QuestionAnswerer
from bertrt.runner import TaskRunner
from bertrt.tasks import task_names, task_spec
from bertrt.types import Device, Precision, PrecisionChoice, Task


class Bundle:
    """An exported bundle folder; each model's runner (``embedder``, ``classifier``, ``qa``, or
    :meth:`runner` for any task) loads on first use."""

    def __init__(
        self,
        path: str | Path,
        *,
        device: Device | str = Device.AUTO,
        precision: PrecisionChoice | Precision | str = PrecisionChoice.FP32,
        options: RuntimeOptions | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise BundleError(
                f"{self.path} is not a folder; run `bertrt export` or pass --models pointing "
                "at an exported bundle."
            )
        _refuse_model_folder(self.path)
        self.manifest = BundleManifest.read(self.path)
        _refuse_unknown_tasks(self.path, self.manifest)
        self.device = coerce_enum(Device, device, "device")
        self.precision = coerce_enum(PrecisionChoice, precision, "precision")
        self.options = options or RuntimeOptions()
        self._runners: dict[str, TaskRunner] = {}
        self._lock = threading.Lock()

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this bundle serves."""
        return tuple(dict.fromkeys(self.manifest.models.values()))

    @property
    def embedder(self) -> Embedder:
        """The bundle's :class:`Embedder` (loaded on first access)."""
        return self._runner(Task.EMBED)  # type: ignore[return-value]

    @property
    def classifier(self) -> Classifier:
        """The bundle's :class:`Classifier` (loaded on first access)."""
        return self._runner(Task.CLASSIFY)  # type: ignore[return-value]

    @property
    def qa(self) -> QuestionAnswerer:
        """The bundle's :class:`QuestionAnswerer` (loaded on first access)."""
        return self._runner(Task.QA)  # type: ignore[return-value]

    def runner(self, task: str) -> TaskRunner:
        """The runner for ``task`` (``embed``, ``classify``, ``qa`` or any task in :data:`bertrt.tasks.TASKS`)."""
        return self._runner(task_spec(task).task)

    def load_all(self) -> Bundle:
        """Load every model of the bundle now; returns the bundle."""
        for task in self.tasks:
            self._runner(task)
        return self

    def model_dir(self, task: str) -> Path:
        """The folder of the bundle's model for ``task``."""
        for folder, folder_task in self.manifest.models.items():
            if folder_task == task:
                return self.path / folder
        present = ", ".join(self.tasks) or "none"
        raise BundleError(
            f"{self.path} has no {task} model (it serves: {present}); re-export it with a "
            f"recipe that includes a {task} model."
        )

    def model_manifest(self, task: str) -> ModelManifest:
        """The manifest of the bundle's model for ``task`` (read without loading the model)."""
        return ModelManifest.read(self.model_dir(task))

    def _runner(self, task: str) -> TaskRunner:
        runner = self._runners.get(task)
        if runner is None:
            with self._lock:
                runner = self._runners.get(task)
                if runner is None:
                    runner = task_spec(task).runner(
                        self.model_dir(task),
                        device=self.device,
                        precision=self.precision,
                        options=self.options,
                    )
                    self._runners[task] = runner
        return runner

    def __repr__(self) -> str:
        loaded = ", ".join(self._runners) or "none yet"
        return f"Bundle({str(self.path)!r}, device={self.device.value}, loaded: {loaded})"


def _refuse_unknown_tasks(path: Path, manifest: BundleManifest) -> None:
    """A bundle made for a task this version of bertrt cannot serve is refused up front."""
    known = task_names()
    unknown = sorted(task for task in manifest.models.values() if task not in known)
    if unknown:
        raise BundleError(
            f"{path} holds a model for the task(s) {', '.join(unknown)}, which this version of bertrt "
            f"does not know (it serves {', '.join(known)}); upgrade bertrt or re-export the bundle."
        )


def _refuse_model_folder(path: Path) -> None:
    """A clear error for the common slip of passing one model's folder as the bundle."""
    try:
        manifest = ModelManifest.read(path)
    except BundleError:
        return  # not a model folder either; BundleManifest.read says what is wrong
    raise BundleError(
        f"{path} holds a single {manifest.task} model, not a bundle; pass the bundle "
        f"folder that contains it ({path.parent}) with --models."
    )


def load(
    path: str | Path,
    *,
    device: Device | str = Device.AUTO,
    precision: PrecisionChoice | Precision | str = PrecisionChoice.FP32,
    options: RuntimeOptions | None = None,
) -> Bundle:
    """Open the bundle at ``path``; its models load on first use (see :class:`Bundle`).

    ``precision`` is ``fp32`` (the default), ``fp16``, ``int8`` or ``auto``: per model, the
    fastest variant whose recorded validation meets its task's budget on this device
    (:mod:`bertrt.precision`); each runner's ``variant`` says which one serves and why.

    >>> # bundle = bertrt.load("models/minilm", device="cpu", precision="auto")
    """
    return Bundle(path, device=device, precision=precision, options=options)
