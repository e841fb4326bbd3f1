"""The exceptions bertrt raises. Every message says what was wrong and what to do.

Every exception bertrt raises on purpose is defined here, under one base class, so a caller
can catch :class:`BertrtError` alone and a reader finds them all in one place.
"""

from __future__ import annotations


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


class RunnerError(BertrtError):
    """A model runner broke its contract: it did not return one result per input."""


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
