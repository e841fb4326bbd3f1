"""Atomic bundle publishing: build in a hidden sibling folder, swap it in with renames.

An interrupted or failed export leaves the previous bundle untouched and no partial one:
the half-built folder is hidden (``.NAME.partial-*``), never at the bundle's path, and is
removed on any error. The swap itself is two renames; a process killed between them
leaves the previous bundle at ``.NAME.previous-*``, which the next export puts back
(see :func:`remove_stale_partials`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``final``; on success it replaces ``final``.

    >>> with staged_directory(Path("models/minilm")) as staging:
    ...     (staging / "manifest.json").write_text("{}")
    """
    final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, final)


def publish(staging: Path, final: Path) -> None:
    """Replace ``final`` with ``staging`` using renames on one file system."""
    backup = None
    if final.exists():
        backup = final.with_name(f".{final.name}.previous-{os.getpid()}")
        os.rename(final, backup)
    try:
        os.rename(staging, final)
    except OSError:
        if backup is not None:
            os.rename(backup, final)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def remove_stale_partials(final: Path) -> None:
    """Clean up after exports that were killed before they could: delete their staging
    folders, and put a previous bundle back when a kill fell between the two renames of
    :func:`publish` (else delete the leftover backup)."""
    final = final.resolve()
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    backups = sorted(final.parent.glob(f".{final.name}.previous-*"), key=lambda p: p.stat().st_mtime)
    if backups and not final.exists():
        os.rename(backups.pop(), final)
    for backup in backups:
        shutil.rmtree(backup, ignore_errors=True)
