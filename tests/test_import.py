"""The runtime stays light: importing it never pulls in torch, transformers, optimum, Ray or pyarrow."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "optimum", "ray", "pyarrow")


def imported_after(statement: str) -> list[str]:
    """Heavy top-level modules present in ``sys.modules`` after ``statement`` in a fresh interpreter."""
    probe = (
        f"import sys, json\n{statement}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "statement",
    [
        "import bertrt",
        "import bertrt.cli",
        "import bertrt, bertrt.session, bertrt.qa_windows, bertrt.qa_decode, bertrt.feeds, bertrt.bundle, bertrt.info",
        "import bertrt.batch, bertrt.batch.ray_engine, bertrt.cli.batch_cmd",
    ],
)
def test_runtime_imports_no_heavy_library(statement: str) -> None:
    assert imported_after(statement) == []


def test_the_probe_can_see_a_heavy_import() -> None:
    pytest.importorskip("torch")
    assert imported_after("import torch") == ["torch"]


def test_public_api_is_explicit() -> None:
    import bertrt

    assert sorted(bertrt.__all__) == bertrt.__all__
    for name in bertrt.__all__:
        assert getattr(bertrt, name).__doc__, f"bertrt.{name} lacks a docstring"
    assert {"load", "Embedder", "Classifier", "QuestionAnswerer", "BertrtError"} <= set(bertrt.__all__)
