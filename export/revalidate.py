"""Re-checking a written bundle against PyTorch: the engine of `bertrt validate`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertrt.export import validate
from bertrt.export.tasks import export_spec
from bertrt.export.variants import variant_runs_here
from transformers import AutoTokenizer

from bertrt.manifest import TORCH_DIR, BundleManifest, ModelManifest
from bertrt.types import Precision


@dataclass(frozen=True)
class VariantCheck:
    """One row of the validation table: a model's variant and its fresh report."""

    model: str
    task: str
    precision: Precision
    file: str
    size_bytes: int
    report: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": str(self.task),
            "precision": self.precision.value,
            "file": self.file,
            "size_bytes": self.size_bytes,
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
    """What `bertrt validate` re-checks: the bundle at ``bundle``, and only the variants in
    ``precisions`` (every variant when empty)."""

    bundle: Path
    precisions: tuple[Precision, ...] = ()


def validate_bundle(config: ValidateConfig) -> list[VariantCheck]:
    """Validate every variant (of ``config.precisions``) of every model in the bundle against
    its PyTorch model."""
    bundle_dir, precisions = config.bundle, config.precisions
    checks = []
    for name, task in BundleManifest.read(bundle_dir).models.items():
        model_dir = bundle_dir / name
        manifest = ModelManifest.read(model_dir)
        model, tokenizer = load_torch_model(model_dir, task)
        reference = validate.torch_reference(task, model, tokenizer, manifest.max_length, manifest.doc_stride)
        for precision, variant in manifest.variants.items():
            if precisions and precision not in precisions:
                continue
            runs_here, why_not = variant_runs_here(precision)
            report = (
                validate.validate_onnx(model_dir / variant.file, task, precision, reference)
                if runs_here
                else validate.not_run_report(precision, why_not)
            )
            size = (model_dir / variant.file).stat().st_size
            checks.append(VariantCheck(name, task, precision, variant.file, size, report))
    return checks
