"""The export pipeline: recipe in, validated bundle out.

For each model of the recipe (one per task of :data:`bertrt.export.tasks.EXPORTS` whose
section the recipe has): load the source weights, fine-tune where the recipe says so, convert
to ONNX, build the precision variants, validate every file against the PyTorch model, and write
the model folder (the task's folder in :data:`bertrt.tasks.TASKS`) with its manifest. The
bundle is built in a staging folder and swapped in only when every model passed (see
:mod:`bertrt.export.atomic`).

Which variants a bundle keeps: fp32 failing its check aborts the export (the bundle's core
would be wrong); an optional variant (fp16, int8) that fails is left out of its model folder
and recorded in the manifest's ``failed`` with its report, a warning names it, and the bundle
is written with the variants that passed. ``ExportOptions(strict=True)`` (``--strict``) makes
any failure abort.

Memory is bounded stage by stage: PyTorch is released once the ONNX file, the reference
outputs and the saved weights exist, so no ONNX Runtime session shares the process with it,
and every stage's peak resident memory is logged and kept in the manifest
(:class:`~bertrt.export.rss.StagePeaks`).
"""

from __future__ import annotations

import errno
import gc
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
from bertrt.export.convert import export_onnx, graph_signature, store_weights_externally
from bertrt.export.heads import TrainingJob
from bertrt.export.recipe import ModelRecipe, Recipe
from bertrt.export.rss import StagePeaks, process_peak_bytes
from bertrt.export.sources import load_pretrained
from bertrt.export.tasks import ExportSpec, export_spec, export_specs
from bertrt.export.variants import build_order, build_variant, validation_device
from transformers import AutoTokenizer

from bertrt.errors import ConfigError, ExportError, ValidationFailed
from bertrt.manifest import (
    MANIFEST_NAME,
    TORCH_DIR,
    VARIANT_FILES,
    BundleManifest,
    ModelManifest,
    Variant,
    sha256_of,
)
from bertrt.memory import pin_mmap_threshold
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
    # Any variant failing its check aborts the export (else only fp32 does).
    strict: bool = False


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
    peak_rss_mib: int = 0


def export_bundle(recipe: Recipe, options: ExportOptions, log: Log = print) -> ExportSummary:
    """Build the bundle described by ``recipe`` at ``options.out``; raise on any failure.

    Nothing is written at ``options.out`` unless every model exports and its fp32 file (with
    ``options.strict``, every file) validates; a failure of any kind (a file-system error such
    as a full disk becomes an ExportError) leaves whatever was there before untouched. An
    optional variant that fails its check is left out and recorded (see the module notes).
    """
    try:
        return _export_bundle(recipe, options, log)
    except OSError as exc:
        raise _file_system_error(exc, options.out) from exc


def _export_bundle(recipe: Recipe, options: ExportOptions, log: Log) -> ExportSummary:
    _check_training_data(recipe, options)
    started = time.perf_counter()
    summary = ExportSummary(out=options.out)
    # Freed blocks of the big stages go back to the system instead of lingering in the heap.
    pin_mmap_threshold()
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
    summary.peak_rss_mib = round(process_peak_bytes() / (1 << 20))
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
    peaks = StagePeaks(log)
    with peaks.stage("load"):
        tokenizer = load_pretrained(
            AutoTokenizer, model_recipe.source, trust_remote_code=model_recipe.trust_remote_code
        )
        model = load_source_model(task, model_recipe)
    max_length = serving_length(recipe, task)
    settings = recipe.training.get(spec.section)
    job = TrainingJob(model, tokenizer, model_recipe, settings, options, max_length, work / model_dir.name, log)
    with peaks.stage("train"):
        training, trained = _train(spec, job)
    doc_stride = recipe.training[spec.section].doc_stride if head is Head.SPAN else None

    with peaks.stage("torch to onnx"):
        raw = export_onnx(model, task, work / f"{model_dir.name}-raw", recipe.opset)
    inputs, outputs = graph_signature(raw)
    with peaks.stage("pytorch reference"):
        reference = validate.torch_reference(task, model, tokenizer, max_length, doc_stride)
    model_dir.mkdir(parents=True)
    # Tokenizer first: int8 calibration tokenizes with the bundle's own tokenizer.json.
    tokenizer.save_pretrained(model_dir)
    config = model.config
    config.save_pretrained(model_dir)
    # The PyTorch weights travel with the bundle so `bertrt validate` and `bertrt eval` can
    # re-check the ONNX files against the exact model they came from (fine-tuned heads included).
    with peaks.stage("save pytorch"):
        model.save_pretrained(model_dir / TORCH_DIR, safe_serialization=True)
    # Every later stage needs only the files and the reference outputs: PyTorch leaves before
    # any ONNX Runtime session or graph rewrite takes its share of memory.
    del model, job
    gc.collect()
    with peaks.stage("weights to external data"):
        store_weights_externally(raw)
    calibration = (
        calibration_texts(task, recipe, options.qa_data, options.sentiment_csv)
        if Precision.INT8 in options.precisions
        else []
    )
    building = _VariantJob(raw, model_dir, task, config, calibration, max_length, reference, trained)
    variants: dict[Precision, Variant] = {}
    failed: dict[Precision, Variant] = {}
    for precision in build_order(options.precisions):
        variant = _build_and_check(building, precision, peaks, log)
        if variant.validation.get("passed") is False:
            _refuse_or_leave_out(model_dir, variant, options.strict, log)
            failed[precision] = variant
        else:
            variants[precision] = variant
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
        labels=tuple(config.id2label[i] for i in range(config.num_labels)) if head is Head.LABELS else None,
        doc_stride=doc_stride,
        failed=failed,
        peak_rss_mib=dict(peaks.mib),
    )
    manifest.write(model_dir)
    return manifest


@dataclass(frozen=True)
class _VariantJob:
    """What building and checking any variant of one model needs: the exported graph (``raw``),
    the model folder, the transformers config, the int8 calibration texts, the serving length,
    the PyTorch reference and whether the head is trained."""

    raw: Path
    model_dir: Path
    task: str
    config: Any
    calibration: list[Any]
    max_length: int
    reference: validate.Reference
    trained: bool


def _build_and_check(job: _VariantJob, precision: Precision, peaks: StagePeaks, log: Log) -> Variant:
    """Build one variant file and validate it; a build step that refuses its own result (an
    int8 file whose outputs change with the batch) comes back as a failed report."""
    try:
        with peaks.stage(f"{precision.value} build"):
            int8 = export_spec(job.task).int8
            built = build_variant(job.raw, job.model_dir, precision, job.config, job.calibration, job.max_length, int8)
    except ValidationFailed as exc:
        if precision is Precision.FP32:
            raise
        report = {"ran": True, "passed": False, "failures": [str(exc)], "stage": "build"}
        log(f"      {precision.value}: FAILED while building: {exc}")
        return Variant(precision, VARIANT_FILES[precision], report)
    gc.collect()  # graph rewriters leave reference cycles holding weights
    with peaks.stage(f"{precision.value} validate"):
        report = _validated(job.model_dir, built.file, job.task, precision, job.reference, job.trained, log)
    gc.collect()
    return Variant(precision, built.file, report, built.optimization)


def _validated(
    model_dir: Path,
    file: str,
    task: str,
    precision: Precision,
    reference: validate.Reference,
    trained: bool,
    log: Log,
) -> dict[str, Any]:
    """Validate one variant file where the validation-device rule places it; raise
    ValidationFailed (nothing is published) when fp32 fails."""
    placement = validation_device(precision)
    if placement.device is None:
        report = validate.not_run_report(precision, placement.reason, trained)
    else:
        report = validate.validate_onnx(model_dir / file, task, precision, reference, placement.device, trained)
    log(f"      {precision.value}: {_describe(report)}")
    if report["passed"] is False and precision is Precision.FP32:
        raise ValidationFailed(
            f"{model_dir.name} {precision.value} failed validation against PyTorch: "
            f"{'; '.join(report['failures'])}; no bundle was written."
        )
    return report


def _refuse_or_leave_out(model_dir: Path, variant: Variant, strict: bool, log: Log) -> None:
    """An optional variant failed: abort under ``strict``, else delete its file and warn."""
    name, precision = model_dir.name, variant.precision.value
    reasons = "; ".join(variant.validation.get("failures", ()))
    if strict:
        raise ValidationFailed(
            f"{name} {precision} failed validation against PyTorch: {reasons}; no bundle was written "
            f"(without --strict the bundle is written without {name} {precision})."
        )
    (model_dir / variant.file).unlink(missing_ok=True)
    log(
        f"      warning: {name} {precision} failed its check ({reasons}) and is left out of the bundle; "
        f"its report is kept in {name}/manifest.json (--strict makes this an error)."
    )


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
    if "min_cosine_hidden" in report:
        parts.append(f"hidden-state cosine {report['min_cosine_hidden']:.4f}")
    for key in ("label_agreement", "answer_agreement"):
        if key in report:
            parts.append(f"{key.replace('_', ' ')} {report[key]:.0%}")
    if not report["passed"]:
        return "FAILED: " + "; ".join(report["failures"])
    return "ok: " + ", ".join(parts) + (" (agreement not judged: untrained head)" if "judged_on" in report else "")


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
