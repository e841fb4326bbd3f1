"""A failed export never leaves a broken model behind, and never runs code from weights.

Each failure (a full disk, an interrupted conversion or training, an unreachable model hub,
validation over tolerance) is raised inside a real export of the tiny recipe over a previous bundle, which
must come out byte for byte untouched, with no partial bundle and no training scratch left.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bertrt.errors import ExportError, ValidationFailed
from bertrt.manifest import sha256_of
from bertrt.types import Precision, Task

REPO = Path(__file__).resolve().parent.parent
SQUAD = {
    "version": "1.1",
    "data": [
        {
            "title": "t",
            "paragraphs": [
                {
                    "context": "paris is the capital of france.",
                    "qas": [
                        {
                            "id": "1",
                            "question": "what is paris?",
                            "answers": [{"text": "the capital", "answer_start": 9}],
                        }
                    ],
                }
            ],
        }
    ],
}


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up on the last write of the export: the bundle manifest, after all
    three models were written to the staging folder."""
    from bertrt import manifest

    write_json = manifest._write_json

    def write(path: Path, data: dict[str, Any]) -> None:
        if "models" in data:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write_json(path, data)

    monkeypatch.setattr(manifest, "_write_json", write)


def interrupted_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the QA head trains (the last model, so two are already staged)."""
    from bertrt.export import finetune

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "finetune_qa", interrupted)


def failed_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classifier's ONNX file differs from PyTorch beyond its tolerance."""
    from bertrt.export import validate

    real = validate.validate_onnx

    def validate_onnx(path: Path, task: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if task is Task.CLASSIFY:
            failure = "logits differ by 1 > 0.0001"
            return {"ran": True, "passed": False, "failures": [failure], "max_abs_diff": {"logits": 1.0}}
        return real(path, task, *args, **kwargs)

    monkeypatch.setattr(validate, "validate_onnx", validate_onnx)


def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classifier's source is a hub id, and no hub answers (HF_HUB_OFFLINE)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def interrupted_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the first model converts to ONNX, before anything is staged."""
    from bertrt.export import pipeline

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "export_onnx", interrupted)


Injection = Callable[[pytest.MonkeyPatch], None]
FAILURES: dict[str, tuple[Injection, type[BaseException], str | None]] = {
    "disk full": (disk_full, ExportError, r"No space left on device \(.*manifest.json\); free disk space"),
    "interrupted training": (interrupted_training, KeyboardInterrupt, None),
    "interrupted conversion": (interrupted_conversion, KeyboardInterrupt, None),
    "hub unreachable": (unreachable_hub, ExportError, r"Could not load 'no-such-org/no-such-bert' from the model hub"),
    "validation over tolerance": (failed_validation, ValidationFailed, "classifier fp32 failed validation"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_export_leaves_the_previous_bundle_untouched(
    failure: str, tiny_recipe: Any, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertrt.export.pipeline import ExportOptions, export_bundle

    inject, error, message = FAILURES[failure]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where training scratch goes
    models = tmp_path / "models"
    out = Path(shutil.copytree(tiny_bundle, models / "tiny"))
    before = file_hashes(out)
    recipe = tiny_recipe
    qa_data = None
    if failure == "hub unreachable":
        hub_classifier = replace(recipe.models["classifier"], source="no-such-org/no-such-bert")
        recipe = replace(recipe, models={**recipe.models, "classifier": hub_classifier})
    if failure == "interrupted training":
        qa_data = tmp_path / "squad.json"
        qa_data.write_text(json.dumps(SQUAD), encoding="utf-8")
    inject(monkeypatch)

    with pytest.raises(error, match=message):
        options = ExportOptions(out=out, precisions=(Precision.FP32,), qa_data=qa_data)
        export_bundle(recipe, options, log=lambda _: None)

    assert file_hashes(out) == before
    assert [p.name for p in models.iterdir()] == ["tiny"]  # no partial bundle beside it
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("failure", ["disk full", "validation over tolerance", "interrupted conversion"])
def test_a_failed_first_export_writes_nothing(
    failure: str, tiny_recipe: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertrt.export.pipeline import ExportOptions, export_bundle

    inject, error, message = FAILURES[failure]
    inject(monkeypatch)
    with pytest.raises(error, match=message):
        options = ExportOptions(out=tmp_path / "tiny", precisions=(Precision.FP32,))
        export_bundle(tiny_recipe, options, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_a_kill_between_the_publishing_renames_is_repaired(tmp_path: Path) -> None:
    from bertrt.export.atomic import remove_stale_partials

    final = tmp_path / "tiny"
    backup = tmp_path / ".tiny.previous-123"
    backup.mkdir()
    (backup / "manifest.json").write_text("{}")
    (tmp_path / ".tiny.partial-abc").mkdir()
    remove_stale_partials(final)  # killed after moving the old bundle away: it comes back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    assert (final / "manifest.json").read_text() == "{}"
    backup.mkdir()
    remove_stale_partials(final)  # killed after publishing: the leftover backup goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_an_error_while_staging_removes_the_staging_folder(tmp_path: Path) -> None:
    from bertrt.export.atomic import staged_directory

    with pytest.raises(OSError), staged_directory(tmp_path / "tiny") as staging:
        (staging / "half.onnx").write_bytes(b"\0")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


# --- nothing is unpickled; remote code stays off ------------------------------------------


def test_source_models_load_from_safetensors_without_remote_code(
    tiny_recipe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertrt.export import pipeline

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(pipeline, "load_pretrained", lambda cls, source, **kwargs: calls.append(kwargs))
    with pytest.raises(AttributeError):  # the stub returns None, which has no .eval()
        pipeline.load_source_model(Task.EMBED, tiny_recipe.models["embedder"])
    assert calls == [{"trust_remote_code": False, "use_safetensors": True}]
    with pytest.raises(AttributeError):
        pipeline.load_source_model(Task.EMBED, replace(tiny_recipe.models["embedder"], trust_remote_code=True))
    assert calls[-1]["trust_remote_code"] is True


def test_recipes_do_not_trust_remote_code_by_default() -> None:
    from bertrt.export.recipe import load_recipe

    for name in ("minilm", "bert-base"):
        recipe = load_recipe(name)
        assert recipe.models and not any(m.trust_remote_code for m in recipe.models.values())


def test_a_pickled_checkpoint_is_refused(tiny_source: Path, tiny_recipe: Any, tmp_path: Path) -> None:
    import torch
    from bertrt.export.pipeline import load_source_model
    from safetensors.torch import load_file

    source = Path(shutil.copytree(tiny_source, tmp_path / "pickled"))
    weights = source / "model.safetensors"
    torch.save(load_file(weights), source / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ExportError, match=r"model\.safetensors"):
        load_source_model(Task.EMBED, replace(tiny_recipe.models["embedder"], source=str(source)))


def test_no_code_path_unpickles() -> None:
    pattern = re.compile(r"\bimport pickle\b|\bpickle\.loads?\(|\btorch\.load\(|\bjoblib\.load\(|allow_pickle=True")
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("bertrt", "export", "benchmarks")
        for path in (REPO / folder).rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
