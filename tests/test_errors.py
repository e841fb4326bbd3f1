"""The errors bertrt raises on purpose: all defined in bertrt.errors, each of the right kind."""

from __future__ import annotations

import ast
import builtins
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bertrt import errors
from bertrt.errors import BertrtError, ConfigError, LimitExceeded
from bertrt.types import Precision

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("bertrt", "export", "benchmarks")


def exception_names(namespace: dict[str, Any]) -> set[str]:
    """Names of the exception classes in ``namespace``."""
    return {name for name, value in namespace.items() if isinstance(value, type) and issubclass(value, BaseException)}


BUILTIN_ERRORS = exception_names(vars(builtins))


def error_classes_outside_errors_module(root: Path) -> list[str]:
    """``path:line name`` of each class under ``root``'s sources, outside bertrt/errors.py,
    that derives from a builtin exception or from one of bertrt's errors."""
    ours = exception_names(vars(errors))
    found = []
    for folder in SOURCES:
        for path in sorted((root / folder).rglob("*.py")):
            if path == root / "bertrt" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.ClassDef):
                    continue
                bases = {base.id if isinstance(base, ast.Name) else getattr(base, "attr", "") for base in node.bases}
                if bases & (BUILTIN_ERRORS | ours):
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    return found


def test_every_error_class_is_defined_in_the_errors_module() -> None:
    assert error_classes_outside_errors_module(ROOT) == []


def test_the_scan_finds_an_error_class_defined_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "bertrt").mkdir()
    (tmp_path / "bertrt" / "errors.py").write_text("class BertrtError(Exception):\n    pass\n")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "stray.py").write_text(
        "from bertrt import errors\n"
        "class Plain:\n    pass\n"
        "class StrayError(errors.InputError):\n    pass\n"
        "class Odd(RuntimeError):\n    pass\n"
    )
    assert error_classes_outside_errors_module(tmp_path) == ["export/stray.py:4 StrayError", "export/stray.py:6 Odd"]


def test_every_error_is_a_bertrt_error_with_a_docstring() -> None:
    classes = [getattr(errors, name) for name in exception_names(vars(errors))]
    assert len(classes) >= 12
    for cls in classes:
        assert issubclass(cls, BertrtError) and cls.__doc__, cls


def test_a_limit_refusal_names_the_field_for_the_library_and_an_option_for_a_front_end() -> None:
    error = LimitExceeded("Context #0 has 119,030 characters, more than", "max_context_chars", 100_000, "shorten it")
    assert str(error) == (
        "Context #0 has 119,030 characters, more than max_context_chars (100,000); "
        "shorten it or raise RuntimeOptions(max_context_chars=...)."
    )
    assert error.worded_for("--max-context-chars") == (
        "Context #0 has 119,030 characters, more than --max-context-chars (100,000); "
        "shorten it or pass a larger --max-context-chars."
    )
    assert error.worded_for(None).endswith("(100,000); shorten it.")
    copy = pickle.loads(pickle.dumps(error))  # worker processes and Ray send errors back pickled
    assert type(copy) is LimitExceeded and str(copy) == str(error) and copy.limit == "max_context_chars"


def test_a_recipe_that_must_train_qa_without_data_is_a_config_error_before_any_work(
    tiny_recipe: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertrt.export import pipeline

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the export started work before checking its training data")

    monkeypatch.setattr(pipeline, "load_source_model", no_work)
    monkeypatch.setattr(pipeline, "remove_stale_partials", no_work)
    models = {**tiny_recipe.models, "qa": replace(tiny_recipe.models["qa"], finetune=True)}
    recipe = replace(tiny_recipe, models=models)
    options = pipeline.ExportOptions(out=tmp_path / "out", precisions=(Precision.FP32,))
    with pytest.raises(ConfigError, match="fine-tunes the QA model; pass SQuAD-format training data with --qa-data"):
        pipeline.export_bundle(recipe, options, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []
