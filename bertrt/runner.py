"""The base every task runner shares: load a verified model folder, open a session and a
tokenizer, and run texts through them batch by batch.

Task classes (:mod:`bertrt.embed`, :mod:`bertrt.classify`, :mod:`bertrt.qa`) add only their
pre- and post-processing. A runner is safe to call from many threads at once: the session
keeps per-thread IO bindings and the tokenizer is configured once, then only read. On the
CPU, a call with at least one batch per intra-op thread runs its batches side by side on
single-threaded lanes (:mod:`bertrt.lanes`).
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np

from bertrt.batching import run_in_batches
from bertrt.errors import BundleError, NonFiniteOutput
from bertrt.lanes import LanePool, lane_batch_size, lane_count, most_lanes
from bertrt.model_files import ModelFiles, open_model
from bertrt.options import RuntimeOptions, coerce_enum
from bertrt.precision import VariantChoice
from bertrt.providers import CPU_PROVIDER
from bertrt.session import OrtSession
from bertrt.tokenizer import Encoding, TextTokenizer
from bertrt.types import Device, Precision, PrecisionChoice

if TYPE_CHECKING:
    from bertrt.tasks import TaskSpec

B = TypeVar("B")
R = TypeVar("R")
logger = logging.getLogger("bertrt")
# Outputs of at most this many values are checked with a Python sum (see check_finite).
PYTHON_SUM_MAX = 256
# The call input behind the only row of a single-text batch.
_FIRST = (0,)


class TaskRunner:
    """Shared loading and batched execution for one model folder of the runner's ``task``.

    ``device`` is ``auto`` (CUDA where it really runs), ``cpu`` or ``cuda``; ``precision``
    picks the ONNX variant (``fp32`` by default; ``auto``: the fastest whose recorded
    validation meets the task's budget on this device, see :mod:`bertrt.precision`), and
    :attr:`variant` says which one serves and why. Checksums are verified before the
    session is created. What the task needs (its graph outputs, its int8 budget, the hint
    for an untrained head) is read from its row in :data:`bertrt.tasks.TASKS`.
    """

    task: ClassVar[str]

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: Device | str = Device.AUTO,
        precision: PrecisionChoice | Precision | str = PrecisionChoice.FP32,
        options: RuntimeOptions | None = None,
    ) -> None:
        self.options = options or RuntimeOptions()
        self.spec = _task_spec(self.task)
        where = coerce_enum(Device, device, "device")
        requested = coerce_enum(PrecisionChoice, precision, "precision")
        self.model: ModelFiles = open_model(Path(model_dir), self.task, requested, where, self.spec.int8_budget)
        logger.info("%s serves %s: %s.", self.model.directory.name, self.model.precision.value, self.variant.reason)
        self.manifest = self.model.manifest
        self.session = OrtSession(self.model.onnx_path, where, self.options, self.model.precision)
        missing = [name for name in self.spec.outputs if name not in self.session.outputs]
        if missing:
            raise BundleError(
                f"{self.model.onnx_path} lacks the output(s) {', '.join(missing)} a {self.task} "
                f"model needs (it has {', '.join(self.session.outputs)}); re-export the bundle."
            )
        self.tokenizer = TextTokenizer.from_dir(self.model.directory, self.manifest.max_length)
        # Lanes (bertrt.lanes): their one-thread session and worker threads, made on first use.
        self._lanes_lock = threading.Lock()
        self._lane_session: OrtSession | None = None
        self._lane_pool: LanePool | None = None
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

    @property
    def variant(self) -> VariantChoice:
        """The variant that serves (``precision``), what was asked for and why."""
        return self.model.choice

    def served(self) -> dict[str, str]:
        """What serves this model, JSON-ready: precision, what was asked for, why, and the
        execution provider.

        >>> # {'precision': 'int8', 'requested': 'auto', 'reason': 'auto on cpu: ...',
        >>> #  'provider': 'CPUExecutionProvider'}
        """
        return {**self.variant.to_dict(), "provider": self.provider}

    def _run_texts(
        self,
        texts: Sequence[str],
        postprocess: Callable[[Mapping[str, np.ndarray], list[Encoding]], list[R]],
        outputs: list[str] | None = None,
    ) -> list[R]:
        """Tokenize, batch by length, run, and post-process each batch; caller's order.
        ``outputs`` names the graph outputs ``postprocess`` reads (all by default)."""
        if len(texts) == 1:
            # A single request: no batch plan and no lanes, and its feeds are views. Right
            # after a model run every line of Python runs from cold caches, so this path
            # costs a single request less than the general one.
            encoding = self.tokenizer.encode_one(texts[0])
            feeds = self.tokenizer.feeds_one(encoding)
            return postprocess(self._run_session(feeds, _FIRST, outputs=outputs), [encoding])
        encodings = self.tokenizer.encode(texts)

        def run_batch(batch: list[tuple[int, Encoding]], session: OrtSession) -> list[R]:
            rows = [encoding for _, encoding in batch]
            inputs = [index for index, _ in batch]
            return postprocess(self._run_session(self.tokenizer.pad(rows).feeds(), inputs, session, outputs), rows)

        lanes = self._lane_plan(len(encodings))
        return run_in_batches(
            list(enumerate(encodings)),
            [len(e) for e in encodings],
            lane_batch_size(self.options.batch_size, lanes),
            lambda batch: run_batch(batch, self.session),
            self.options.group_by_length,
            map_batches=lambda batches: self._map_batches(run_batch, batches, lanes),
        )

    def _lane_plan(self, items: int) -> int:
        """How many lanes a call of ``items`` texts (or QA windows) runs on; 1: in turn on
        the main session (always so on CUDA)."""
        if self.session.provider != CPU_PROVIDER:
            return 1
        full_batches = -(-items // self.options.batch_size)
        return lane_count(self.options.batch_lanes, full_batches, self.options.intra_op_threads)

    def _map_batches(self, run_batch: Callable[[B, OrtSession], R], batches: Sequence[B], lanes: int) -> list[R]:
        """``run_batch(batch, session)`` for every batch of one call, in order: in turn on the
        main session, or side by side on the lanes' one-thread session."""
        if lanes == 1:
            return [run_batch(batch, self.session) for batch in batches]
        session, pool = self._lanes()
        return pool.map(lambda batch: run_batch(batch, session), batches)

    @property
    def sessions(self) -> list[OrtSession]:
        """The sessions this runner has opened: its own, and the lanes' one-thread session
        once a call has run on lanes."""
        return [self.session] + ([self._lane_session] if self._lane_session is not None else [])

    def _lanes(self) -> tuple[OrtSession, LanePool]:
        """The lanes' one-thread session and worker pool, opened on first use."""
        with self._lanes_lock:
            if self._lane_session is None or self._lane_pool is None:
                one_thread = replace(self.options, intra_op_threads=1, inter_op_threads=1)
                self._lane_session = OrtSession(self.model.onnx_path, Device.CPU, one_thread, self.model.precision)
                self._lane_pool = LanePool(most_lanes(self.options.batch_lanes, self.options.intra_op_threads))
            return self._lane_session, self._lane_pool

    def _run_session(
        self,
        feeds: Mapping[str, np.ndarray],
        inputs: Sequence[int],
        session: OrtSession | None = None,
        outputs: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one batch on ``session`` (the runner's own by default) for the graph
        ``outputs`` named (all by default); ``inputs[row]`` is the call's input that batch row
        ``row`` belongs to. Only those outputs are fetched and checked.

        Raises :class:`~bertrt.errors.NonFiniteOutput` naming the model file and the input when
        an output holds NaN or inf (an fp16 overflow, a broken file): such values would reach
        the caller as scores, and NaN is not even valid JSON.
        """
        results = (session or self.session).run(feeds, outputs)
        check_finite(results, inputs, self.model.onnx_path)
        return results


def check_finite(outputs: Mapping[str, np.ndarray], inputs: Sequence[int], model_file: Path) -> None:
    """Raise NonFiniteOutput for the first batch row (``inputs[row]`` names its input) whose
    outputs hold NaN or inf.

    One sum per output decides, without a temporary array: NaN and inf survive a sum, so a
    finite sum clears the whole output; only a non-finite one (or a sum that overflowed) is
    looked at row by row. Small outputs are summed in Python floats, larger ones with
    ``np.add.reduce`` (``ndarray.sum`` without its Python layer).

    >>> logits = np.array([[0.5, 1.0], [np.nan, 0.0]])
    >>> check_finite({"logits": logits}, [7, 3], Path("model.onnx"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bertrt.errors.NonFiniteOutput: model.onnx gave NaN or infinite values in its logits output for input #3; ...
    """
    for name, values in outputs.items():
        if values.size <= PYTHON_SUM_MAX:
            # A few values (a classifier's logits): a Python sum, which needs none of NumPy's
            # reduction code; right after a model run, that code is no longer in the caches.
            if math.isfinite(sum(values.ravel().tolist())):
                continue
        elif math.isfinite(np.add.reduce(values, axis=None)):
            continue
        bad_rows = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad_rows.any():
            raise NonFiniteOutput(str(model_file), name, inputs[int(np.argmax(bad_rows))])


def _task_spec(task: str) -> TaskSpec:
    # The registry names the runner classes, so it can only be read once they exist.
    from bertrt.tasks import task_spec

    return task_spec(task)
