"""Bundle and model manifests: the contract between the export stage and the runtime.

A bundle is a folder::

    models/minilm/manifest.json        BundleManifest: recipe, creation time, versions, models
    models/minilm/embedder/            one folder per model
        manifest.json                  ModelManifest: task, tensors, files + sha256, validation
        model.onnx [model.fp16.onnx model.int8.onnx]
        tokenizer.json  config.json  ...

The export stage writes these files with :meth:`to_dict`; the runtime reads them with
:meth:`from_dict`. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bertrt.errors import BundleError
from bertrt.types import Precision, task_named

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
# Folder of a model's PyTorch weights inside its model folder (kept for re-validation).
TORCH_DIR = "pytorch"
# File name of each precision variant inside a model folder.
VARIANT_FILES: dict[Precision, str] = {
    Precision.FP32: "model.onnx",
    Precision.FP16: "model.fp16.onnx",
    Precision.INT8: "model.int8.onnx",
}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element type and shape (symbolic axes are str)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))


@dataclass(frozen=True)
class Variant:
    """One ONNX file of a model at one precision, with its validation report against PyTorch.

    ``validation`` holds at least ``passed`` (bool) and ``tolerance``; the export stage adds
    ``max_abs_diff`` per output, ``label_agreement`` / ``answer_agreement`` and notes.
    ``evaluation`` maps a data set's name to the task-level figures ``bertrt eval --record``
    measured on it against PyTorch (``count``, the file's ``sha256``, agreement...), which
    ``precision="auto"`` reads (:mod:`bertrt.precision`).
    """

    precision: Precision
    file: str
    validation: dict[str, Any] = field(default_factory=dict)
    optimization: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Variant:
        return cls(
            precision=Precision(data["precision"]),
            file=data["file"],
            validation=dict(data.get("validation", {})),
            optimization=dict(data.get("optimization", {})),
            evaluation=dict(data.get("evaluation", {})),
        )


@dataclass(frozen=True)
class ModelManifest:
    """Everything the runtime needs to know about one exported model.

    ``task`` is the task's name (a :class:`~bertrt.types.Task` member for a built-in task);
    ``files`` maps every file the runtime uses (but manifest.json) to its sha256, checked
    before a session is created; ``reference_files`` lists the PyTorch weights kept for
    re-validation, which the runtime never reads;
    ``labels`` is a label head's id2label in id order; ``max_length`` is the truncation
    length the export validated with, and ``doc_stride`` the QA window overlap.
    ``failed`` holds the optional variants (fp16, int8) that failed their check at export
    and were left out of the folder, with their reports, so a reader learns why one is
    missing; ``peak_rss_mib`` the export's peak resident memory per stage, in MiB.
    """

    task: str
    source: str
    max_length: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    files: dict[str, str]
    variants: dict[Precision, Variant]
    trained: bool = True
    training: dict[str, Any] | None = None
    labels: tuple[str, ...] | None = None
    doc_stride: int | None = None
    reference_files: dict[str, str] = field(default_factory=dict)
    failed: dict[Precision, Variant] = field(default_factory=dict)
    peak_rss_mib: dict[str, int] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as their values)."""
        data = asdict(self)
        data["task"] = str(self.task)
        for key in ("variants", "failed"):
            data[key] = {p.value: {**asdict(v), "precision": p.value} for p, v in getattr(self, key).items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelManifest:
        try:
            return cls(
                task=_task_name(data["task"]),
                source=data["source"],
                max_length=int(data["max_length"]),
                inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
                opset=int(data["opset"]),
                files=dict(data["files"]),
                variants={
                    Precision(k): Variant.from_dict(v) for k, v in data["variants"].items()
                },
                trained=bool(data.get("trained", True)),
                training=data.get("training"),
                labels=tuple(data["labels"]) if data.get("labels") is not None else None,
                doc_stride=data.get("doc_stride"),
                reference_files=dict(data.get("reference_files", {})),
                failed={Precision(k): Variant.from_dict(v) for k, v in data.get("failed", {}).items()},
                peak_rss_mib={str(k): int(v) for k, v in data.get("peak_rss_mib", {}).items()},
                format_version=int(data.get("format_version", FORMAT_VERSION)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise BundleError(
                f"The model manifest is malformed ({exc!r}); re-export the bundle with `bertrt export`."
            ) from exc

    @classmethod
    def read(cls, model_dir: Path) -> ModelManifest:
        """Read ``model_dir/manifest.json``."""
        return cls.from_dict(_read_json(model_dir / MANIFEST_NAME))

    def write(self, model_dir: Path) -> None:
        """Write ``model_dir/manifest.json``."""
        _write_json(model_dir / MANIFEST_NAME, self.to_dict())


@dataclass(frozen=True)
class BundleManifest:
    """The top-level manifest: which recipe made the bundle, when, and its models (folder name
    to task name).

    ``command`` is the command line that ran the export, as the process received it
    (``sys.argv``); empty for bundles written before it was recorded.
    """

    recipe: str
    created: str
    versions: dict[str, str]
    models: dict[str, str]
    format_version: int = FORMAT_VERSION
    command: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (enums as their values)."""
        data = asdict(self)
        data["models"] = {name: str(task) for name, task in self.models.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleManifest:
        try:
            return cls(
                recipe=data["recipe"],
                created=data["created"],
                versions=dict(data.get("versions", {})),
                models={name: _task_name(task) for name, task in data["models"].items()},
                format_version=int(data.get("format_version", FORMAT_VERSION)),
                command=tuple(str(arg) for arg in data.get("command", ())),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise BundleError(
                f"The bundle manifest is malformed ({exc!r}); re-export the bundle with `bertrt export`."
            ) from exc

    @classmethod
    def read(cls, bundle_dir: Path) -> BundleManifest:
        """Read ``bundle_dir/manifest.json``."""
        return cls.from_dict(_read_json(bundle_dir / MANIFEST_NAME))

    def write(self, bundle_dir: Path) -> None:
        """Write ``bundle_dir/manifest.json``."""
        _write_json(bundle_dir / MANIFEST_NAME, self.to_dict())


def _task_name(value: Any) -> str:
    """A manifest's task name; which names a runtime serves is the task registry's call."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"a task is a name, not {value!r}")
    return task_named(value)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(
            f"{path} does not exist, so {path.parent} is not a bertrt bundle; "
            "run `bertrt export` or pass --models pointing at an exported bundle."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} cannot be read as JSON ({exc}); re-export the bundle.") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path} does not hold a JSON object; re-export the bundle.")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` whole or not at all (a temporary file renamed over it), so a
    manifest rewritten in place (`bertrt eval --record`) is never left half-written."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(partial, path)
