"""Options and helpers shared by several CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_MODELS = Path("models/minilm")

ModelsOption = Annotated[
    Path,
    typer.Option("--models", help="Bundle folder written by `bertrt export`.", show_default=True),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON on stdout and nothing else.")
]
