"""The exceptions bertrt raises. Every message says what was wrong and what to do."""

from __future__ import annotations


class BertrtError(Exception):
    """Base class of every error bertrt raises on purpose."""


class BundleError(BertrtError):
    """A model bundle is missing, incomplete, of the wrong task or fails its checksums."""


class ConfigError(BertrtError):
    """An option, recipe or argument has a value bertrt cannot use."""


class InputError(BertrtError):
    """A request's input (text, question, context, limits) cannot be served."""


class DeviceError(BertrtError):
    """The requested execution device is not available."""


class ExportError(BertrtError):
    """The export stage failed; the previous bundle, if any, is left untouched."""


class ValidationFailed(ExportError):
    """An exported file differs from its PyTorch model by more than its tolerance."""
