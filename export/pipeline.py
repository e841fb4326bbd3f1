"""The export pipeline: recipe in, validated bundle out.

For each model of the recipe (one per task of :data:`bertrt.export.tasks.EXPORTS` whose
section the recipe has): load the source weights, fine-tune where the recipe says so, convert
to ONNX, build the precision variants, validate every file against the PyTorch model, and write
the model folder (the task's folder in :data:`bertrt.tasks.TASKS`) with its manifest. The
bundle is built in a staging folder and swapped in only when every model passed (see
:mod:`bertrt.export.atomic`).
"""

from __future__ import annotations

import errno
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import transformers
from bertrt.export import validate
from bertrt.export.atomic import remove_stale_partials, staged_directory
from bertrt.export.calibration import calibration_texts
from bertrt.export.convert import export_onnx, graph_signature
from bertrt.export.heads import TrainingJob
from bertrt.export.recipe import ModelRecipe, Recipe
from bertrt.export.sources import load_pretrained
from bertrt.export.tasks import ExportSpec, export_spec, export_specs
from bertrt.export.variants import build_order, build_variant, validation_device
from transformers import AutoTokenizer

from bertrt.errors import ConfigError, ExportError, ValidationFailed
from bertrt.manifest import (
    MANIFEST_NAME,
    TORCH_DIR,
    BundleManifest,
    ModelManifest,
    Variant,
    sha256_of,
)
from bertrt.tasks import Head, task_spec
from bertrt.types import Precision, Task

Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportOptions:
    """What to build and with which data, beyond the recipe itself."""

    out: Path
    precisions: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.INT8)
    # SQuAD data: a JSON file, a save_to_disk folder or a hub id (see bertrt.export.squad).
    qa_data: str | Path | None = None
    qa_eval_data: str | Path | None = None
    sentiment_csv: Path | None = None


@dataclass
class ModelResult:
    """What happened to one model: its manifest and the time it took."""

    name: str
    manifest: ModelManifest
    seconds: float


@dataclass
class ExportSummary:
    """The outcome of a whole export."""

    out: Path
    models: list[ModelResult] = field(default_factory=list)
    seconds: float = 0.0


def export_bundle(recipe: Recipe, options: ExportOptions, log: Log = print) -> ExportSummary:
    """Build the bundle described by ``recipe`` at ``options.out``; raise on any failure.

    Nothing is written at ``options.out`` unless every model exports and validates; a
    failure of any kind (a file-system error such as a full disk becomes an ExportError)
    leaves whatever was there before untouched.
    """
    try:
        return _export_bundle(recipe, options, log)
    except OSError as exc:
        raise _file_system_error(exc, options.out) from exc


def _export_bundle(recipe: Recipe, options: ExportOptions, log: Log) -> ExportSummary:
    _check_training_data(recipe, options)
    started = time.perf_counter()
    summary = ExportSummary(out=options.out)
    remove_stale_partials(options.out)
    specs = [spec for spec in export_specs() if spec.section in recipe.models]
    folders = {spec.task: task_spec(spec.task).folder for spec in specs}
    with (
        _quiet_libraries(),
        tempfile.TemporaryDirectory(prefix="bertrt-train-") as work,
        staged_directory(options.out) as staging,
    ):
        for step, spec in enumerate(specs, start=1):
            name = folders[spec.task]
            log(f"[{step}/{len(specs)}] {name}: {recipe.models[spec.section].source}")
            t0 = time.perf_counter()
            manifest = _export_model(recipe, spec, options, staging / name, Path(work), log)
            summary.models.append(ModelResult(name, manifest, time.perf_counter() - t0))
        BundleManifest(
            recipe=recipe.name,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            versions=_library_versions(),
            models={folder: task for task, folder in folders.items()},
            command=tuple(sys.argv),
        ).write(staging)
    summary.seconds = time.perf_counter() - started
    return summary


def _check_training_data(recipe: Recipe, options: ExportOptions) -> None:
    """Refuse, before any work, a recipe that must fine-tune QA but was given no data to train on."""
    qa = recipe.models.get(export_spec(Task.QA).section)
    if qa is not None and qa.finetune is True and options.qa_data is None:
        raise ConfigError("The recipe fine-tunes the QA model; pass SQuAD-format training data with --qa-data.")


def _file_system_error(exc: OSError, out: Path) -> ExportError:
    what = exc.strerror or str(exc) or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename else ""
    fix = "free disk space" if exc.errno == errno.ENOSPC else "fix the file or folder it names"
    return ExportError(
        f"The export stopped on a file-system error, {what}{where}; {fix} and rerun "
        f"(nothing was published, and any bundle already at {out} is untouched)."
    )


def _export_model(
    recipe: Recipe, spec: ExportSpec, options: ExportOptions, model_dir: Path, work: Path, log: Log
) -> ModelManifest:
    task, model_recipe = spec.task, recipe.models[spec.section]
    head = task_spec(task).head
    tokenizer = load_pretrained(AutoTokenizer, model_recipe.source, trust_remote_code=model_recipe.trust_remote_code)
    model = load_source_model(task, model_recipe)
    max_length = serving_length(recipe, task)
    settings = recipe.training.get(spec.section)
    job = TrainingJob(model, tokenizer, model_recipe, settings, options, max_length, work / model_dir.name, log)
    training, trained = _train(spec, job)
    doc_stride = recipe.training[spec.section].doc_stride if head is Head.SPAN else None

    raw = export_onnx(model, task, work / f"{model_dir.name}-raw", recipe.opset)
    inputs, outputs = graph_signature(raw)
    reference = validate.torch_reference(task, model, tokenizer, max_length, doc_stride)
    model_dir.mkdir(parents=True)
    # Tokenizer first: int8 calibration tokenizes with the bundle's own tokenizer.json.
    tokenizer.save_pretrained(model_dir)
    model.config.save_pretrained(model_dir)
    calibration = (
        calibration_texts(task, recipe, options.qa_data, options.sentiment_csv)
        if Precision.INT8 in options.precisions
        else []
    )
    variants: dict[Precision, Variant] = {}
    for precision in build_order(options.precisions):
        built = build_variant(raw, model_dir, precision, model.config, calibration, max_length)
        report = _validated(model_dir, built.file, task, precision, reference, log)
        variants[precision] = Variant(precision, built.file, report, built.optimization)
    # The PyTorch weights travel with the bundle so `bertrt validate` and `bertrt eval` can
    # re-check the ONNX files against the exact model they came from (fine-tuned heads included).
    model.save_pretrained(model_dir / TORCH_DIR, safe_serialization=True)
    manifest = ModelManifest(
        task=task,
        source=model_recipe.source,
        max_length=max_length,
        inputs=inputs,
        outputs=outputs,
        opset=recipe.opset,
        files=_checksums(model_dir, exclude=TORCH_DIR),
        reference_files=_checksums(model_dir / TORCH_DIR, prefix=TORCH_DIR),
        variants=variants,
        trained=trained,
        training=training,
        labels=tuple(model.config.id2label[i] for i in range(model.config.num_labels)) if head is Head.LABELS else None,
        doc_stride=doc_stride,
    )
    manifest.write(model_dir)
    return manifest


def _validated(
    model_dir: Path, file: str, task: str, precision: Precision, reference: validate.Reference, log: Log
) -> dict[str, Any]:
    """Validate one variant file; raise ValidationFailed (nothing is published) when it fails."""
    placement = validation_device(precision)
    if placement.device is None:
        report = validate.not_run_report(precision, placement.reason)
    else:
        report = validate.validate_onnx(model_dir / file, task, precision, reference, placement.device)
    log(f"      {precision.value}: {_describe(report)}")
    if report["passed"] is False:
        raise ValidationFailed(
            f"{model_dir.name} {precision.value} failed validation against PyTorch: "
            f"{'; '.join(report['failures'])}; no bundle was written."
        )
    return report


def load_source_model(task: str, spec: ModelRecipe, seed: int = 0) -> Any:
    """Load the PyTorch model a bundle's ``task`` model starts from, in eval mode.

    New head weights (a classifier or span head on a bare encoder) are drawn from a seeded
    generator, so the same recipe always starts from the same model; a head the export
    fine-tunes gets the labels its trainer teaches. Only safetensors weights are read (never
    a pickled ``pytorch_model.bin``), and the source's own code runs only when the recipe sets
    ``trust_remote_code``.
    """
    row = export_spec(task)
    transformers.set_seed(seed)
    # Weights come from safetensors only: a pickled checkpoint could run code when loaded.
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code, "use_safetensors": True}
    if row.labels is not None and row.train is not None and spec.finetune:
        kwargs.update(
            num_labels=len(row.labels),
            id2label=dict(row.labels),
            label2id={v: k for k, v in row.labels.items()},
        )
    return load_pretrained(row.model_class, spec.source, **kwargs).eval()


def _train(spec: ExportSpec, job: TrainingJob) -> tuple[dict[str, Any] | None, bool]:
    """Fine-tune where the recipe asks; return (training metrics, whether the head is trained)."""
    if not spec.head_architecture:
        return None, True  # a bare encoder has no head to train
    if spec.train is None or job.recipe.finetune is False:
        return None, _has_trained_head(job.model, spec.head_architecture)
    return spec.train(job)


def serving_length(recipe: Recipe, task: str) -> int:
    """The truncation length a model serves with: a span head's window (its training
    settings' ``max_length``), else the model's or the recipe's."""
    section = export_spec(task).section
    if task_spec(task).head is Head.SPAN:
        window: int = recipe.training[section].max_length
        return window
    return recipe.models[section].max_length or recipe.max_length


def _has_trained_head(model: Any, head_architecture: str) -> bool:
    """Whether the source checkpoint already carried this task head (a bare encoder does not)."""
    return any(name.endswith(head_architecture) for name in (model.config.architectures or ()))


def _checksums(folder: Path, exclude: str | None = None, prefix: str | None = None) -> dict[str, str]:
    """sha256 of every file under ``folder`` (but manifests and the ``exclude`` subfolder)."""
    sums = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or path.name == MANIFEST_NAME or (exclude and relative.parts[0] == exclude):
            continue
        sums[str(Path(prefix) / relative) if prefix else str(relative)] = sha256_of(path)
    return sums


def _describe(report: dict[str, Any]) -> str:
    if not report["ran"]:
        return f"not validated here ({report['reason']})"
    parts = [f"{name} max|diff| {diff:.2e}" for name, diff in report["max_abs_diff"].items()]
    for key in ("label_agreement", "answer_agreement"):
        if key in report:
            parts.append(f"{key.replace('_', ' ')} {report[key]:.0%}")
    return ("ok: " if report["passed"] else "FAILED: ") + ", ".join(parts)


def _library_versions() -> dict[str, str]:
    versions = {}
    packages = (
        "bertrt", "torch", "transformers", "optimum", "optimum-onnx", "onnx",
        "onnxruntime-gpu", "onnxruntime", "tokenizers",
    )  # fmt: skip
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


class _quiet_libraries:
    """Keep library chatter off the console: transformers' expected missing-head notes and the
    ONNX Runtime optimizer's and quantizer's advisory log lines. Errors still show."""

    def __enter__(self) -> None:
        self._verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        self._root_level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        transformers.logging.set_verbosity(self._verbosity)
        logging.getLogger().setLevel(self._root_level)
