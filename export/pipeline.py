"""The export pipeline: recipe in, validated bundle out.

For each of the three models: load the source weights, fine-tune where the recipe says so,
convert to ONNX, build the precision variants, validate every file against the PyTorch model,
and write the model folder with its manifest. The bundle is built in a staging folder and
swapped in only when every model passed (see :mod:`bertrt.export.atomic`).
"""

from __future__ import annotations

import errno
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import transformers
from bertrt.export import validate
from bertrt.export.atomic import remove_stale_partials, staged_directory
from bertrt.export.calibration import calibration_texts
from bertrt.export.convert import export_onnx, graph_signature
from bertrt.export.recipe import ModelRecipe, Recipe
from bertrt.export.sources import load_pretrained
from bertrt.export.variants import build_order, build_variant, variant_runs_here
from transformers import (
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from bertrt.errors import ConfigError, ExportError, ValidationFailed
from bertrt.manifest import (
    MANIFEST_NAME,
    BundleManifest,
    ModelManifest,
    Variant,
    sha256_of,
)
from bertrt.types import Device, Precision, Task

Log = Callable[[str], None]

# Folder name of each model inside a bundle.
MODEL_DIRS: dict[Task, str] = {Task.EMBED: "embedder", Task.CLASSIFY: "classifier", Task.QA: "qa"}
TORCH_DIR = "pytorch"
SENTIMENT_LABELS = {0: "NEGATIVE", 1: "POSITIVE"}
MODEL_CLASSES: dict[Task, Any] = {
    Task.EMBED: AutoModel,
    Task.CLASSIFY: AutoModelForSequenceClassification,
    Task.QA: AutoModelForQuestionAnswering,
}


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

    Nothing is written at ``options.out`` unless all three models export and validate; a
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
    with (
        _quiet_libraries(),
        tempfile.TemporaryDirectory(prefix="bertrt-train-") as work,
        staged_directory(options.out) as staging,
    ):
        for step, task in enumerate(MODEL_DIRS, start=1):
            name = MODEL_DIRS[task]
            log(f"[{step}/3] {name}: {_model_recipe(recipe, task).source}")
            t0 = time.perf_counter()
            manifest = _export_model(recipe, task, options, staging / name, Path(work), log)
            summary.models.append(ModelResult(name, manifest, time.perf_counter() - t0))
        BundleManifest(
            recipe=recipe.name,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            versions=_library_versions(),
            models={MODEL_DIRS[t]: t for t in MODEL_DIRS},
            command=tuple(sys.argv),
        ).write(staging)
    summary.seconds = time.perf_counter() - started
    return summary


def _file_system_error(exc: OSError, out: Path) -> ExportError:
    what = exc.strerror or str(exc) or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename else ""
    fix = "free disk space" if exc.errno == errno.ENOSPC else "fix the file or folder it names"
    return ExportError(
        f"The export stopped on a file-system error, {what}{where}; {fix} and rerun "
        f"(nothing was published, and any bundle already at {out} is untouched)."
    )


def _export_model(
    recipe: Recipe, task: Task, options: ExportOptions, model_dir: Path, work: Path, log: Log
) -> ModelManifest:
    spec = _model_recipe(recipe, task)
    tokenizer = load_pretrained(AutoTokenizer, spec.source, trust_remote_code=spec.trust_remote_code)
    model = load_source_model(task, spec)
    training, trained = _train(recipe, task, spec, model, tokenizer, options, work, log)
    max_length = serving_length(recipe, task)
    doc_stride = recipe.qa_training.doc_stride if task is Task.QA else None

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
        source=spec.source,
        max_length=max_length,
        inputs=inputs,
        outputs=outputs,
        opset=recipe.opset,
        files=_checksums(model_dir, exclude=TORCH_DIR),
        reference_files=_checksums(model_dir / TORCH_DIR, prefix=TORCH_DIR),
        variants=variants,
        trained=trained,
        training=training,
        labels=(
            tuple(model.config.id2label[i] for i in range(model.config.num_labels)) if task is Task.CLASSIFY else None
        ),
        doc_stride=doc_stride,
    )
    manifest.write(model_dir)
    return manifest


def _validated(
    model_dir: Path, file: str, task: Task, precision: Precision, reference: validate.Reference, log: Log
) -> dict[str, Any]:
    """Validate one variant file; raise ValidationFailed (nothing is published) when it fails."""
    runs_here, why_not = variant_runs_here(precision)
    if not runs_here:
        report = validate.not_run_report(precision, why_not)
    else:
        device = Device.CUDA if precision is Precision.FP16 else Device.CPU
        report = validate.validate_onnx(model_dir / file, task, precision, reference, device)
    log(f"      {precision.value}: {_describe(report)}")
    if report["passed"] is False:
        raise ValidationFailed(
            f"{model_dir.name} {precision.value} failed validation against PyTorch: "
            f"{'; '.join(report['failures'])}; no bundle was written."
        )
    return report


def load_source_model(task: Task, spec: ModelRecipe, seed: int = 0) -> Any:
    """Load the PyTorch model a bundle's ``task`` model starts from, in eval mode.

    New head weights (a classifier or span head on a bare encoder) are drawn from a seeded
    generator, so the same recipe always starts from the same model. Only safetensors
    weights are read (never a pickled ``pytorch_model.bin``), and the source's own code runs
    only when the recipe sets ``trust_remote_code``.
    """
    transformers.set_seed(seed)
    # Weights come from safetensors only: a pickled checkpoint could run code when loaded.
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code, "use_safetensors": True}
    if task is Task.CLASSIFY and spec.finetune:
        kwargs.update(
            num_labels=len(SENTIMENT_LABELS),
            id2label=SENTIMENT_LABELS,
            label2id={v: k for k, v in SENTIMENT_LABELS.items()},
        )
    return load_pretrained(MODEL_CLASSES[task], spec.source, **kwargs).eval()


def _train(
    recipe: Recipe,
    task: Task,
    spec: ModelRecipe,
    model: Any,
    tokenizer: Any,
    options: ExportOptions,
    work: Path,
    log: Log,
) -> tuple[dict[str, Any] | None, bool]:
    """Fine-tune where the recipe asks; return (training metrics, whether the head is trained)."""
    if task is Task.EMBED:
        return None, True
    if task is Task.CLASSIFY:
        if not spec.finetune:
            return None, _has_trained_head(model, "ForSequenceClassification")
        from bertrt.export.data import load_sentiment
        from bertrt.export.finetune import finetune_classifier

        splits = load_sentiment(recipe.classifier_training, options.sentiment_csv)
        log(f"      fine-tuning on {len(splits.train)} IMDB reviews")
        metrics = finetune_classifier(
            model, tokenizer, splits, recipe.classifier_training, work / "classifier", serving_length(recipe, task)
        )
        # The split settings let `bertrt eval` rebuild the same never-trained-on held-out set.
        metrics["config"] = asdict(recipe.classifier_training)
        log(
            f"      held-out IMDB accuracy {metrics['imdb_heldout_accuracy']:.2%}, "
            f"Rotten Tomatoes {metrics['rotten_tomatoes_accuracy']:.2%}"
        )
        return metrics, True
    if spec.finetune is False:
        return None, _has_trained_head(model, "ForQuestionAnswering")
    if options.qa_data is None:
        log("      no --qa-data: exporting the untrained span head (marked trained: false)")
        return None, False
    from bertrt.export.finetune import evaluate_qa, finetune_qa
    from bertrt.export.squad import SquadSource, load_squad

    source = SquadSource.parse(options.qa_data)
    examples = load_squad(source, limit=recipe.qa_training.max_examples)
    log(f"      fine-tuning on {len(examples)} questions from {source.name}")
    metrics = finetune_qa(model, tokenizer, examples, recipe.qa_training, work / "qa")
    metrics["config"] = asdict(recipe.qa_training)
    metrics["data"] = source.name
    if options.qa_eval_data is not None:
        eval_source = SquadSource.parse(options.qa_eval_data)
        held = load_squad(eval_source, limit=recipe.qa_training.eval_size)
        scores = evaluate_qa(model, tokenizer, held, recipe.qa_training)
        metrics["eval"] = {"data": eval_source.name, **scores}
        log(f"      {eval_source.name}: EM {scores['exact_match']:.1f}, F1 {scores['f1']:.1f}")
    return metrics, True


def _check_training_data(recipe: Recipe, options: ExportOptions) -> None:
    """Refuse, before any work, a recipe that must fine-tune QA but was given no data to train on."""
    if recipe.qa.finetune is True and options.qa_data is None:
        raise ConfigError("The recipe fine-tunes the QA model; pass SQuAD-format training data with --qa-data.")


def serving_length(recipe: Recipe, task: Task) -> int:
    """The truncation length a model serves with: QA's window, else the model's or the recipe's."""
    if task is Task.QA:
        return recipe.qa_training.max_length
    return _model_recipe(recipe, task).max_length or recipe.max_length


def _has_trained_head(model: Any, head_suffix: str) -> bool:
    """Whether the source checkpoint already carried this task head (a bare encoder does not)."""
    return any(name.endswith(head_suffix) for name in (model.config.architectures or ()))


def _model_recipe(recipe: Recipe, task: Task) -> ModelRecipe:
    return {Task.EMBED: recipe.embedder, Task.CLASSIFY: recipe.classifier, Task.QA: recipe.qa}[task]


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
    packages = ("bertrt", "torch", "transformers", "optimum", "optimum-onnx", "onnx")
    for package in (*packages, "onnxruntime-gpu", "onnxruntime", "tokenizers"):
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
