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

from bertrt.errors import BertrtError
from bertrt.types import Device, Precision

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
    Precision,
    typer.Option("--precision", help="Which exported variant to load (the bundle must have it)."),
]
VerboseOption = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Log which execution provider runs and why (stderr)."),
]


@contextlib.contextmanager
def command_errors(verbose: bool = False, capture_warnings: bool = True) -> Iterator[None]:
    """Run a command body: bertrt errors become one stderr line and exit 2, warnings one
    stderr line each (unless ``capture_warnings`` is off), and --verbose shows the runtime's
    log lines."""
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
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        if verbose:
            logging.getLogger("bertrt").removeHandler(handler)
    for warning in caught or ():
        typer.echo(f"warning: {warning.message}", err=True)
