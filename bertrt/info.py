"""What a bundle holds, read from its manifests alone (no session is created).

Example::

    description = describe("models/minilm", verify=True)
    description["models"]["classifier"]["variants"]["fp32"]["validation"]["passed"]
    description["models"]["classifier"]["auto"]   # {'precision': 'int8', 'device': 'cpu', 'reason': ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bertrt.bundle import Bundle
from bertrt.errors import BundleError
from bertrt.manifest import ModelManifest
from bertrt.model_files import verify_checksums
from bertrt.precision import choose_variant, target_device
from bertrt.tasks import task_spec
from bertrt.types import Device, PrecisionChoice


def describe(path: str | Path, verify: bool = False, device: Device = Device.AUTO) -> dict[str, Any]:
    """A JSON-ready description of the bundle at ``path`` without creating any session.

    Recipe, creation time, the export's command line, library versions and, per model: task,
    source, max length, trained flag, training metrics, labels, per variant its file, size
    in bytes, validation report and recorded evaluations, under ``failed`` the variants left
    out at export with their reports, and ``auto``: the variant ``precision="auto"`` serves on
    ``device`` (``auto``: this machine) and why. With ``verify``, each model also gets
    ``checksums_ok``.
    """
    bundle = Bundle(path)
    models: dict[str, Any] = {}
    for folder, task in bundle.manifest.models.items():
        model_dir = bundle.path / folder
        manifest = ModelManifest.read(model_dir)
        entry: dict[str, Any] = {
            "task": str(task),
            "source": manifest.source,
            "max_length": manifest.max_length,
            "doc_stride": manifest.doc_stride,
            "trained": manifest.trained,
            "training": manifest.training,
            "labels": list(manifest.labels) if manifest.labels else None,
            "variants": {
                precision.value: {
                    "file": variant.file,
                    "bytes": _size(model_dir / variant.file),
                    "validation": variant.validation,
                    "evaluation": variant.evaluation,
                }
                for precision, variant in manifest.variants.items()
            },
            # Variants that failed their check at export and were left out of the folder.
            "failed": {
                precision.value: {"file": variant.file, "validation": variant.validation}
                for precision, variant in manifest.failed.items()
            },
            "auto": _auto_choice(manifest, task, device),
        }
        if verify:
            try:
                verify_checksums(model_dir, manifest)
                entry["checksums_ok"] = True
            except BundleError as exc:
                entry["checksums_ok"] = False
                entry["checksum_error"] = str(exc)
        models[folder] = entry
    return {
        "path": str(bundle.path),
        "recipe": bundle.manifest.recipe,
        "created": bundle.manifest.created,
        "command": list(bundle.manifest.command),
        "versions": bundle.manifest.versions,
        "models": models,
    }


def _auto_choice(manifest: ModelManifest, task: str, device: Device) -> dict[str, str]:
    """What ``precision="auto"`` serves for this model on ``device``, and why."""
    choice = choose_variant(manifest, PrecisionChoice.AUTO, device, task_spec(task).int8_budget)
    return {"precision": choice.precision.value, "device": target_device(device).value, "reason": choice.reason}


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None
