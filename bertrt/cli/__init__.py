"""The `bertrt` command line: a thin Typer layer over the library.

Each command parses its options, builds one config object, calls one library function
and prints the result (:mod:`bertrt.cli.render`).
Commands live in small modules by theme; importing this package never imports torch
(the export commands import the export stage only when they run).
"""

from __future__ import annotations

import sys

import typer

from bertrt.errors import BertrtError

app = typer.Typer(
    name="bertrt",
    help="Export BERT models to validated ONNX bundles and serve them with ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Export BERT models to validated ONNX bundles and serve them with ONNX Runtime."""


# Command modules register themselves on `app` when imported.
from bertrt.cli import batch_cmd as _batch_cmd  # noqa: F401
from bertrt.cli import bench_cmd as _bench_cmd  # noqa: F401
from bertrt.cli import export_cmds as _export_cmds  # noqa: F401
from bertrt.cli import run_cmds as _run_cmds  # noqa: F401
from bertrt.cli import serve_cmd as _serve_cmd  # noqa: F401
from bertrt.cli.common import error_message


def main() -> None:
    """Console-script entry point: run the app, turning bertrt errors into one line on stderr."""
    try:
        app()
    except BertrtError as exc:
        typer.echo(f"error: {error_message(exc)}", err=True)
        sys.exit(2)
