"""Footprint: peak memory of a process serving all three models, and the time to import bertrt.

Each measurement runs in a fresh Python process (:mod:`bertrt.bench.footprint_child`, run as a
script file so that not even the ``bertrt`` package is imported unless the stack under test
needs it), so nothing the harness itself imported is counted.

Example::

    footprint = measure_footprint(Path("models/minilm"), threads=2, texts=["I love Paris"],
                                  question="Where?", context="In Paris.", stacks=("bertrt-fp32", "torch"))
    footprint["bertrt-fp32"]["peak_rss_mb"], footprint["import_bertrt_s"]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bertrt.errors import BertrtError

_IMPORT_PROBE = "import time; t = time.perf_counter(); import bertrt; print(time.perf_counter() - t)"
# Run by path: `python -m bertrt.bench.footprint_child` would import bertrt (and ONNX Runtime)
# into the PyTorch stack's process before the measurement starts.
_CHILD = Path(__file__).with_name("footprint_child.py")


def measure_footprint(
    bundle: Path,
    *,
    threads: int,
    texts: Sequence[str],
    question: str,
    context: str,
    stacks: Sequence[str],
    import_repeats: int = 5,
) -> dict[str, Any]:
    """Peak RSS (MiB) of each stack (``bertrt-fp32``, ``bertrt-int8``, ``torch``) loading all
    three models and serving W1, and the median wall time of ``import bertrt`` in a fresh
    interpreter."""
    request = {
        "bundle": str(Path(bundle).resolve()),
        "threads": threads,
        "texts": list(texts),
        "question": question,
        "context": context,
    }
    result: dict[str, Any] = {stack: _child(stack, request) for stack in stacks}
    result["import_bertrt_s"] = import_time(import_repeats)
    return result


def import_time(repeats: int) -> float:
    """Median seconds of ``import bertrt`` over ``repeats`` fresh interpreters (one untimed
    first run warms the file cache)."""
    runs = [float(_python(["-c", _IMPORT_PROBE])) for _ in range(repeats + 1)]
    return statistics.median(runs[1:])


def _child(stack: str, request: dict[str, Any]) -> dict[str, Any]:
    try:
        report: dict[str, Any] = json.loads(_python([str(_CHILD), stack], json.dumps(request)))
        return report
    except BertrtError as exc:
        return {"error": str(exc)}


def _python(args: list[str], stdin: str = "") -> str:
    """Run this interpreter with ``args``; its last stdout line (BertrtError if it fails)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, env=env, timeout=600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BertrtError(f"The footprint probe `python {' '.join(args)}` failed ({detail}).")
    return lines[-1]
