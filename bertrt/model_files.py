"""Opening one exported model folder: manifest, task check, precision variant, checksums.

Everything here happens before any ONNX Runtime session exists, so a tampered or
truncated file is refused before ONNX Runtime parses it.

Example::

    model = open_model(Path("models/minilm/classifier"), Task.CLASSIFY, PrecisionChoice.AUTO, Device.CPU)
    model.onnx_path       # .../classifier/model.int8.onnx, sha256-verified
    model.choice.reason   # 'auto on cpu: int8 label agreement ... within the budget of 98.50%, so int8 serves'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bertrt.errors import BundleError
from bertrt.manifest import MANIFEST_NAME, ModelManifest, sha256_of
from bertrt.precision import Budget, VariantChoice, choose_variant
from bertrt.tokenizer import TOKENIZER_FILE
from bertrt.types import Device, Precision, PrecisionChoice


@dataclass(frozen=True)
class ModelFiles:
    """A verified model folder: its manifest, the variant that serves (``precision``, and
    ``choice``: what was asked for and why this variant) and its ONNX file."""

    directory: Path
    manifest: ModelManifest
    precision: Precision
    onnx_path: Path
    choice: VariantChoice


def open_model(
    model_dir: Path,
    task: str,
    precision: PrecisionChoice,
    device: Device = Device.AUTO,
    budget: Budget | None = None,
    verify: bool = True,
) -> ModelFiles:
    """Read ``model_dir``'s manifest, refuse another task, pick the variant, verify checksums.

    ``precision`` is what was asked for; ``auto`` picks the variant for ``device`` by the
    task's int8 ``budget`` (:func:`bertrt.precision.choose_variant`). With ``verify`` (the
    default) every file the manifest lists is checked against its sha256; the first
    mismatch raises BundleError naming the file. The chosen ONNX file and the tokenizer
    must be listed: a file without a checksum is never loaded.
    """
    model_dir = Path(model_dir)
    _refuse_bundle_root(model_dir, task)
    manifest = ModelManifest.read(model_dir)
    if manifest.task != task:
        raise BundleError(
            f"{model_dir} holds a {manifest.task} model, not a {task} model; "
            f"pass the bundle's {task} folder instead."
        )
    choice = choose_variant(manifest, precision, device, budget)
    served = choice.precision
    variant = manifest.variants.get(served)
    if variant is None and served in manifest.failed:
        reasons = "; ".join(manifest.failed[served].validation.get("failures", ())) or "see its manifest"
        present = ", ".join(sorted(p.value for p in manifest.variants)) or "none"
        raise BundleError(
            f"{model_dir} has no {served.value} variant because it failed validation against PyTorch "
            f"at export ({reasons}) and was left out; choose one of {present} with --precision."
        )
    if variant is None:
        present = ", ".join(sorted(p.value for p in manifest.variants)) or "none"
        raise BundleError(
            f"{model_dir} has no {served.value} variant (it has: {present}); choose one "
            f"of those with --precision or re-export with {served.value} enabled."
        )
    if verify:
        for name in (variant.file, TOKENIZER_FILE):
            _require_checksum(model_dir, manifest, name)
        verify_checksums(model_dir, manifest)
    onnx_path = _inside(model_dir, variant.file)
    if not onnx_path.is_file():
        raise BundleError(f"{onnx_path} is missing; re-export the bundle with `bertrt export`.")
    return ModelFiles(model_dir, manifest, served, onnx_path, choice)


def verify_checksums(model_dir: Path, manifest: ModelManifest) -> None:
    """Raise BundleError unless every file in ``manifest.files`` exists with its sha256."""
    for name, expected in manifest.files.items():
        path = _inside(model_dir, name)
        if not path.is_file():
            raise BundleError(
                f"{path} is listed in the manifest but missing; re-export the bundle with `bertrt export`."
            )
        if sha256_of(path) != expected:
            raise BundleError(
                f"{path} does not match its sha256 in the manifest (edited, truncated or "
                "corrupted); re-export the bundle with `bertrt export`."
            )


def _require_checksum(model_dir: Path, manifest: ModelManifest, name: str) -> None:
    if name not in manifest.files:
        raise BundleError(
            f"{model_dir / name} has no sha256 in the manifest, so it cannot be verified; "
            "re-export the bundle with `bertrt export`."
        )


def _inside(model_dir: Path, name: str) -> Path:
    """``model_dir / name``, refusing names that point outside the folder."""
    path = (model_dir / name).resolve()
    if model_dir.resolve() not in path.parents:
        raise BundleError(
            f"The manifest in {model_dir} names {name!r}, which lies outside the model "
            "folder; re-export the bundle."
        )
    return path


def _refuse_bundle_root(model_dir: Path, task: str) -> None:
    """A clear error for the common slip of passing the bundle root to a runner."""
    path = model_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # ModelManifest.read reports unreadable manifests
    if isinstance(data, dict) and "models" in data and "task" not in data:
        raise BundleError(
            f"{model_dir} is a bundle, not a model folder; use bertrt.load({str(model_dir)!r}) "
            f"or pass the bundle's {task} folder."
        )
