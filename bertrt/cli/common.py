"""Options and helpers shared by several CLI commands."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from bertrt.errors import BertrtError, LimitExceeded
from bertrt.options import RuntimeOptions
from bertrt.types import Device, PrecisionChoice

DEFAULT_MODELS = Path("models/minilm")

ModelsOption = Annotated[
    Path,
    typer.Option("--models", help="Bundle folder written by `bertrt export`.", show_default=True),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout and nothing else.")
]
DeviceOption = Annotated[
    Device,
    typer.Option(
        "--device",
        help="Where to run: auto takes CUDA when its provider really loads, else the CPU; "
        "cuda fails unless a GPU runs it.",
    ),
]
PrecisionOption = Annotated[
    PrecisionChoice,
    typer.Option(
        "--precision",
        help="Which exported variant to load (the bundle must have it); auto takes, per model, the fastest "
        "variant whose recorded validation meets its task's budget on this device (int8 on a CPU, fp16 on a "
        "GPU), else fp32.",
    ),
]
VerboseOption = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Log which execution provider runs and why (stderr)."),
]


# The runtime's input limits (RuntimeOptions' fields). Each option's parameter is named after
# its field, so a refusal can name the option that raises the limit (see error_message).
MaxTextsOption = Annotated[
    int, typer.Option("--max-texts-per-call", min=1, help="Most texts one command may process; more are refused.")
]
MaxCharsOption = Annotated[
    int,
    typer.Option(
        "--max-chars-per-text",
        min=1,
        help="Longest text accepted, in characters; longer ones are refused. A text is read only up to "
        "the model's maximum length, so this bounds the input, not the work.",
    ),
]
MaxPairsOption = Annotated[
    int,
    typer.Option(
        "--max-texts-per-call", min=1, help="Most question-context pairs one command may answer; more are refused."
    ),
]
MaxQuestionCharsOption = Annotated[
    int,
    typer.Option(
        "--max-chars-per-text", min=1, help="Longest question accepted, in characters; longer ones are refused."
    ),
]
MaxContextOption = Annotated[
    int,
    typer.Option(
        "--max-context-chars",
        min=1,
        help="Longest context accepted, in characters; longer ones are refused. A context is read whole, "
        "window after window, so its length sets the work.",
    ),
]
DEFAULT_LIMITS = RuntimeOptions()


@contextlib.contextmanager
def command_errors(
    verbose: bool = False, capture_warnings: bool = True, context: typer.Context | None = None
) -> Iterator[None]:
    """Run a command body: bertrt errors become one stderr line and exit 2, warnings one
    stderr line each (unless ``capture_warnings`` is off), and --verbose shows the runtime's
    log lines. With the command's ``context``, a refusal for a runtime limit names the
    command's option that raises it (see :func:`error_message`)."""
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("bertrt: %(message)s"))
        logger = logging.getLogger("bertrt")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=capture_warnings) as caught:
            if capture_warnings:
                warnings.simplefilter("always")
            yield
    except BertrtError as exc:
        typer.echo(f"error: {error_message(exc, context)}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        if verbose:
            logging.getLogger("bertrt").removeHandler(handler)
    for warning in caught or ():
        typer.echo(f"warning: {warning.message}", err=True)


def error_message(exc: BertrtError, context: typer.Context | None = None) -> str:
    """``exc``'s message for the command line. A refusal for a runtime limit names the option
    of the running command (``context``) that raises it, such as ``--max-context-chars``,
    instead of RuntimeOptions, which a command-line user cannot reach; without such an
    option it gives the remedy alone."""
    if isinstance(exc, LimitExceeded):
        return exc.worded_for(_option_named(context, exc.limit))
    return str(exc)


def _option_named(context: typer.Context | None, parameter: str) -> str | None:
    """The flag of the command's option whose parameter is named ``parameter``, if any."""
    for param in context.command.params if context is not None else ():
        if param.name == parameter and param.param_type_name == "option":
            return param.opts[0]
    return None
