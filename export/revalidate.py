"""Re-checking a written bundle against PyTorch: the engine of `bertrt validate`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertrt.export import validate
from bertrt.export.tasks import export_spec
from bertrt.export.variants import validation_device
from transformers import AutoTokenizer

from bertrt.manifest import TORCH_DIR, BundleManifest, ModelManifest
from bertrt.types import Device, Precision


@dataclass(frozen=True)
class VariantCheck:
    """One row of the validation table: a model's variant and its fresh report.

    A ``left_out`` row is a variant that failed its check at export and is not in the bundle
    (``size_bytes`` 0); its report is the export's, read from the manifest.
    """

    model: str
    task: str
    precision: Precision
    file: str
    size_bytes: int
    report: dict[str, Any]
    left_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": str(self.task),
            "precision": self.precision.value,
            "file": self.file,
            "size_bytes": self.size_bytes,
            "left_out": self.left_out,
            **self.report,
        }


def load_torch_model(model_dir: Path, task: str) -> tuple[Any, Any]:
    """The PyTorch model and tokenizer saved beside a bundle's ONNX files.

    Only safetensors weights are read (the export writes them): a pickled checkpoint dropped
    into a bundle is never unpickled.
    """
    model = export_spec(task).model_class.from_pretrained(model_dir / TORCH_DIR, use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


@dataclass(frozen=True)
class ValidateConfig:
    """What `bertrt validate` re-checks: the bundle at ``bundle``, only the variants in
    ``precisions`` (every variant when empty), each placed by the validation-device rule
    for ``device``."""

    bundle: Path
    precisions: tuple[Precision, ...] = ()
    device: Device = Device.AUTO


def validate_bundle(config: ValidateConfig) -> list[VariantCheck]:
    """Validate every variant (of ``config.precisions``) of every model in the bundle against
    its PyTorch model, each where :func:`~bertrt.export.variants.validation_device` places it.

    Variants the export left out after failing their check come last, as ``left_out`` rows
    carrying the export's report: they are not files of the bundle, so they do not fail it.
    """
    bundle_dir, precisions, device = config.bundle, config.precisions, config.device
    checks = []
    for name, task in BundleManifest.read(bundle_dir).models.items():
        model_dir = bundle_dir / name
        manifest = ModelManifest.read(model_dir)
        wanted = [p for p in manifest.variants if not precisions or p in precisions]
        placements = {precision: validation_device(precision, device) for precision in wanted}
        if not wanted:
            continue
        model, tokenizer = load_torch_model(model_dir, task)
        reference = validate.torch_reference(task, model, tokenizer, manifest.max_length, manifest.doc_stride)
        # The reference outputs are all the checks need: PyTorch's memory goes before ONNX Runtime's comes.
        del model
        for precision in wanted:
            file, placement = manifest.variants[precision].file, placements[precision]
            report = (
                validate.validate_onnx(model_dir / file, task, precision, reference, placement.device, manifest.trained)
                if placement.device is not None
                else validate.not_run_report(precision, placement.reason, manifest.trained)
            )
            checks.append(VariantCheck(name, task, precision, file, (model_dir / file).stat().st_size, report))
    return checks + _left_out(bundle_dir, precisions)


def _left_out(bundle_dir: Path, precisions: tuple[Precision, ...]) -> list[VariantCheck]:
    """The variants each model's manifest records as failed at export and left out."""
    rows = []
    for name, task in BundleManifest.read(bundle_dir).models.items():
        for precision, variant in ModelManifest.read(bundle_dir / name).failed.items():
            if not precisions or precision in precisions:
                rows.append(VariantCheck(name, task, precision, variant.file, 0, variant.validation, left_out=True))
    return rows
