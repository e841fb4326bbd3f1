"""The exceptions bertrt raises. Every message says what was wrong and what to do.

Every exception bertrt raises on purpose is defined here, under one base class, so a caller
can catch :class:`BertrtError` alone and a reader finds them all in one place.

Example::

    try:
        bundle.qa(question, very_long_context)
    except LimitExceeded as exc:
        print(exc.limit)   # 'max_context_chars': the RuntimeOptions field to raise
"""

from __future__ import annotations

from typing import Any


class BertrtError(Exception):
    """Base class of every error bertrt raises on purpose."""


# --- loading and configuration -------------------------------------------------------------


class BundleError(BertrtError):
    """A model bundle is missing, incomplete, of the wrong task or fails its checksums."""


class ConfigError(BertrtError):
    """An option, recipe or argument has a value bertrt cannot use."""


class DeviceError(BertrtError):
    """The requested execution device is not available."""


# --- requests ------------------------------------------------------------------------------


class InputError(BertrtError):
    """A request's input (text, question, context, limits) cannot be served."""


class BadRowError(InputError):
    """A row of a ``bertrt batch`` input cannot be run and the job is ``strict``."""


class LimitExceeded(InputError):
    """A request goes past one of the :class:`~bertrt.options.RuntimeOptions` limits.

    ``limit`` names the field (``max_context_chars``...) and ``allowed`` its value. The
    message tells a library user to raise ``RuntimeOptions(<limit>=...)``; a front end with
    its own way to raise the limit words the same refusal with :meth:`worded_for`.

    >>> error = LimitExceeded("Context #0 has 9 characters, more than", "max_context_chars", 5, "shorten it")
    >>> str(error).endswith("(5); shorten it or raise RuntimeOptions(max_context_chars=...).")
    True
    >>> error.worded_for("--max-context-chars").endswith("(5); shorten it or pass a larger --max-context-chars.")
    True
    """

    def __init__(self, problem: str, limit: str, allowed: int, remedy: str) -> None:
        self.problem = problem
        self.limit = limit
        self.allowed = allowed
        self.remedy = remedy
        super().__init__(f"{problem} {limit} ({allowed:,}); {remedy} or raise RuntimeOptions({limit}=...).")

    def worded_for(self, option: str | None) -> str:
        """The refusal naming ``option`` (a front end's setting for this limit, such as the
        CLI's ``--max-context-chars``) instead of the RuntimeOptions field; with ``None`` (the
        front end cannot raise this limit) it gives the remedy alone."""
        if option is None:
            return f"{self.problem} {self.limit} ({self.allowed:,}); {self.remedy}."
        return f"{self.problem} {option} ({self.allowed:,}); {self.remedy} or pass a larger {option}."

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its parts when pickled (Ray and worker processes send errors back).
        return (type(self), (self.problem, self.limit, self.allowed, self.remedy))


class RunnerError(BertrtError):
    """A model runner broke its contract: it did not return one result per input."""


class NonFiniteOutput(RunnerError):
    """A model file gave NaN or infinite values for an input: its results cannot be served.

    ``model_file`` is the ONNX file and ``index`` the input's position in the call.
    """

    def __init__(self, model_file: str, output: str, index: int) -> None:
        self.model_file = model_file
        self.output = output
        self.index = index
        super().__init__(
            f"{model_file} gave NaN or infinite values in its {output} output for input #{index}; "
            "this file is broken for that input: load another --precision or re-export the bundle with `bertrt export`."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.model_file, self.output, self.index))


# --- serving -------------------------------------------------------------------------------


class OverloadedError(BertrtError):
    """A batcher's queue is full; the call was refused without running."""


class BatcherClosedError(BertrtError):
    """The batcher was closed before the call could run."""


class NotReadyError(BertrtError):
    """The server's models are not loaded (yet, or loading failed)."""


class TaskNotServedError(BertrtError):
    """The server does not serve the requested task."""


# --- the export stage ----------------------------------------------------------------------


class ExportError(BertrtError):
    """The export stage failed; the previous bundle, if any, is left untouched."""


class ValidationFailed(ExportError):
    """An exported file differs from its PyTorch model by more than its tolerance."""
