"""Task accuracy of PyTorch and every bertrt variant side by side: the engine of `bertrt eval`.

Classification is scored on the held-out IMDB reviews the export never trained on (the same
seeded split) and on Rotten Tomatoes sentences; QA on a SQuAD-format file with SQuAD EM/F1 and
the runtime's own long-context windowing; embeddings by the cosine between each variant's
pooled vector and PyTorch's on the same two sentiment sets. Each bertrt variant is also
compared with PyTorch answer for answer (label agreement, identical answer text). Each variant
runs where :func:`~bertrt.export.variants.validation_device` places it for ``--device``; the
report names the device of each, and the variants it could not run here with the reason.

:func:`record_evaluation` (``bertrt eval --record``) keeps each variant's figures in its
model's manifest (``Variant.evaluation``, with the example count and the file's sha256),
which is the evidence ``precision="auto"`` reads (:mod:`bertrt.precision`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bertrt.export.finetune import EVAL_BATCH_SIZE, predict_answers, predict_labels
from bertrt.export.recipe import ClassifierTraining
from bertrt.export.revalidate import load_torch_model
from bertrt.export.squad import SquadExample, check_squad_source, load_squad, squad_scores
from bertrt.export.variants import Placement, validation_device
from tqdm.auto import tqdm

import bertrt
from bertrt.errors import ConfigError
from bertrt.manifest import ModelManifest
from bertrt.types import Device, Pooling, Precision, Task

CHUNK = 64  # texts per runtime call, so the progress bar moves


@dataclass(frozen=True)
class EvalConfig:
    """What `bertrt eval` scores: the ``task`` model (classify, qa or embed) of the bundle at
    ``bundle``; QA on the SQuAD data ``data`` (any source :func:`~bertrt.export.squad.load_squad`
    reads). ``limit`` keeps the first N examples of each data set; ``device`` places each
    variant by the validation-device rule; ``progress`` shows progress bars on stderr."""

    task: Task
    bundle: Path
    data: str | Path | None = None
    limit: int | None = None
    progress: bool = True
    device: Device = Device.AUTO

    def __post_init__(self) -> None:
        if self.task not in (Task.CLASSIFY, Task.QA, Task.EMBED):
            raise ConfigError(f"eval scores the classify, qa or embed model, not {self.task.value}.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be 1 or more, got {self.limit}.")


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """The report of :func:`eval_qa`, :func:`eval_classify` or :func:`eval_embed`, as
    ``config.task`` says."""
    if config.task is Task.CLASSIFY:
        return eval_classify(config.bundle, config.limit, config.progress, config.device)
    if config.task is Task.EMBED:
        return eval_embed(config.bundle, config.limit, config.progress, config.device)
    if config.data is None:
        raise ConfigError("--task qa needs --data: a SQuAD-format JSON file, a save_to_disk folder or a hub id.")
    try:
        check_squad_source(config.data)
    except ConfigError as exc:
        raise ConfigError(f"--data: {exc}") from None
    return eval_qa(config.bundle, config.data, config.limit, config.progress, config.device)


def placements(model_dir: Path, device: Device = Device.AUTO) -> dict[Precision, Placement]:
    """Where each variant of a model runs for ``device`` (``device`` None: not here)."""
    manifest = ModelManifest.read(model_dir)
    return {precision: validation_device(precision, device) for precision in manifest.variants}


def eval_classify(
    bundle_dir: Path, limit: int | None = None, progress: bool = True, device: Device = Device.AUTO
) -> dict[str, Any]:
    """Accuracy of PyTorch and each variant on held-out IMDB and Rotten Tomatoes."""
    from bertrt.export.data import load_sentiment

    model_dir = bertrt.load(bundle_dir).model_dir(Task.CLASSIFY)
    where = placements(model_dir, device)
    manifest = ModelManifest.read(model_dir)
    splits = load_sentiment(_training_config(manifest))
    model, tokenizer = load_torch_model(model_dir, Task.CLASSIFY)
    datasets = {"imdb_heldout": splits.heldout_imdb, "rotten_tomatoes": splits.rotten_tomatoes}
    report: dict[str, Any] = {"task": "classify", "datasets": {}, "not_run": _not_run(where)}
    label_ids = {label: i for i, label in enumerate(manifest.labels or ())}
    for name, table in datasets.items():
        rows = table.select(range(min(limit, len(table)))) if limit else table
        texts, labels = list(rows["text"]), np.asarray(rows["label"])
        reference = predict_labels(model, tokenizer, texts, manifest.max_length)
        systems: dict[str, Any] = {"pytorch": {"accuracy": _accuracy(reference, labels)}}
        for precision, run_on in _runnable(where):
            runner = bertrt.load(bundle_dir, device=run_on, precision=precision).classifier
            predicted = _in_chunks(texts, _label_ids(runner, label_ids), f"{name} {precision.value}", progress)
            systems[f"bertrt-{precision.value}"] = {
                "accuracy": _accuracy(predicted, labels),
                "label_agreement": float(np.mean(predicted == reference)),
                "device": run_on.value,
            }
        report["datasets"][name] = {"count": len(texts), "systems": systems}
    return report


def eval_embed(
    bundle_dir: Path, limit: int | None = None, progress: bool = True, device: Device = Device.AUTO
) -> dict[str, Any]:
    """How close each variant's pooled sentence vector (``pooler_output``) stays to PyTorch's,
    on held-out IMDB reviews and Rotten Tomatoes sentences: the mean, the 1st percentile and
    the least cosine similarity over the texts."""
    from bertrt.export.data import load_sentiment

    model_dir = bertrt.load(bundle_dir).model_dir(Task.EMBED)
    where = placements(model_dir, device)
    manifest = ModelManifest.read(model_dir)
    splits = load_sentiment(ClassifierTraining())
    model, tokenizer = load_torch_model(model_dir, Task.EMBED)
    datasets = {"imdb_heldout": splits.heldout_imdb, "rotten_tomatoes": splits.rotten_tomatoes}
    report: dict[str, Any] = {"task": "embed", "datasets": {}, "not_run": _not_run(where)}
    for name, table in datasets.items():
        rows = table.select(range(min(limit, len(table)))) if limit else table
        texts = list(rows["text"])
        reference = _torch_pooled(model, tokenizer, texts, manifest.max_length)
        systems: dict[str, Any] = {}
        for precision, run_on in _runnable(where):
            runner = bertrt.load(bundle_dir, device=run_on, precision=precision).embedder
            vectors = _in_chunks(texts, _pooled(runner), f"{name} {precision.value}", progress)
            cosines = _cosines(vectors, reference)
            systems[f"bertrt-{precision.value}"] = {
                "pooler_cosine_mean": float(cosines.mean()),
                "pooler_cosine_p1": float(np.percentile(cosines, 1)),
                "pooler_cosine_min": float(cosines.min()),
                "device": run_on.value,
            }
        report["datasets"][name] = {"count": len(texts), "systems": systems}
    return report


def eval_qa(
    bundle_dir: Path, data: str | Path, limit: int | None = None, progress: bool = True, device: Device = Device.AUTO
) -> dict[str, Any]:
    """SQuAD EM/F1 of PyTorch and each variant, and how often each variant's answer equals PyTorch's."""
    model_dir = bertrt.load(bundle_dir).model_dir(Task.QA)
    where = placements(model_dir, device)
    manifest = ModelManifest.read(model_dir)
    examples = load_squad(data, limit=limit)
    model, tokenizer = load_torch_model(model_dir, Task.QA)
    reference = predict_answers(model, tokenizer, examples, manifest.max_length, manifest.doc_stride or 128)
    systems: dict[str, Any] = {"pytorch": squad_scores(reference, examples)}
    for precision, run_on in _runnable(where):
        runner = bertrt.load(bundle_dir, device=run_on, precision=precision).qa
        predicted = _answer_all(runner, examples, f"qa {precision.value}", progress)
        scores = squad_scores(predicted, examples)
        scores["answer_agreement"] = float(np.mean([predicted[e.id] == reference[e.id] for e in examples]))
        scores["device"] = run_on.value
        systems[f"bertrt-{precision.value}"] = scores
    return {
        "task": "qa",
        "data": str(data),
        "count": len(examples),
        "trained": manifest.trained,
        "systems": systems,
        "not_run": _not_run(where),
    }


def record_evaluation(bundle_dir: Path, report: dict[str, Any]) -> Path:
    """Keep ``report``'s figures for every bertrt variant in its model's manifest
    (``Variant.evaluation[data set]``, with the example count, the sha256 of the file that was
    scored and the time), replacing earlier records of the same data sets; returns the
    manifest's path. A QA data set is named after its file (or hub id)."""
    task = Task(report["task"])
    model_dir = bertrt.load(bundle_dir).model_dir(task)
    manifest = ModelManifest.read(model_dir)
    if task is Task.QA:
        name = Path(str(report["data"]).split(":")[0]).name or str(report["data"])
        datasets = {name: {"count": report["count"], "systems": report["systems"]}}
    else:
        datasets = report["datasets"]
    recorded = datetime.now(UTC).isoformat(timespec="seconds")
    variants = dict(manifest.variants)
    for precision, variant in manifest.variants.items():
        entries = {
            name: {
                **result["systems"][f"bertrt-{precision.value}"],
                "count": result["count"],
                "reference": "pytorch",
                "sha256": manifest.files[variant.file],
                "recorded": recorded,
            }
            for name, result in datasets.items()
            if f"bertrt-{precision.value}" in result["systems"]
        }
        if entries:
            variants[precision] = replace(variant, evaluation={**variant.evaluation, **entries})
    replace(manifest, variants=variants).write(model_dir)
    return model_dir / "manifest.json"


def _pooled(runner: Any) -> Callable[[list[str]], np.ndarray]:
    """A function that embeds a chunk of texts into pooled (``pooler_output``) vectors."""
    return lambda chunk: np.stack([r.vector for r in runner(chunk, pooling=Pooling.POOLER, token_embeddings=False)])


def _torch_pooled(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> np.ndarray:
    """PyTorch's ``pooler_output`` for each text (batched, texts of similar length together)."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    pooled = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for begin in range(0, len(order), EVAL_BATCH_SIZE):
            rows = order[begin : begin + EVAL_BATCH_SIZE]
            batch = tokenizer.pad({"input_ids": [encoded[r] for r in rows]}, return_tensors="pt")
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
            pooled[rows] = model(**batch).pooler_output.float().numpy()
    return pooled


def _cosines(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity; a zero vector against anything counts as 0."""
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
    dots = np.einsum("ij,ij->i", vectors.astype(np.float64), reference.astype(np.float64))
    cosines: np.ndarray = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return cosines


def _label_ids(runner: Any, label_ids: dict[str, int]) -> Callable[[list[str]], np.ndarray]:
    """A function that classifies a chunk of texts into label ids."""
    return lambda chunk: np.array([label_ids[r.label] for r in runner(chunk)])


def _runnable(where: dict[Precision, Placement]) -> list[tuple[Precision, Device]]:
    return [(precision, placement.device) for precision, placement in where.items() if placement.device is not None]


def _not_run(where: dict[Precision, Placement]) -> dict[str, str]:
    """The variants left out of the report, with the reason (fp16 without a GPU)."""
    return {f"bertrt-{p.value}": placement.reason for p, placement in where.items() if placement.device is None}


def _answer_all(runner: Any, examples: Sequence[SquadExample], label: str, progress: bool) -> dict[str, str]:
    predictions: dict[str, str] = {}
    bar = tqdm(total=len(examples), desc=label, disable=not progress, leave=False)
    for begin in range(0, len(examples), CHUNK):
        chunk = examples[begin : begin + CHUNK]
        results = runner([e.question for e in chunk], [e.context for e in chunk])
        predictions.update({e.id: (r.best.text if r.best else "") for e, r in zip(chunk, results)})
        bar.update(len(chunk))
    bar.close()
    return predictions


def _in_chunks(texts: list[str], run: Callable[[list[str]], np.ndarray], label: str, progress: bool) -> np.ndarray:
    parts = []
    bar = tqdm(total=len(texts), desc=label, disable=not progress, leave=False)
    for begin in range(0, len(texts), CHUNK):
        parts.append(run(texts[begin : begin + CHUNK]))
        bar.update(min(CHUNK, len(texts) - begin))
    bar.close()
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _training_config(manifest: ModelManifest) -> ClassifierTraining:
    """The split settings the classifier was trained with, so its held-out set stays unseen."""
    saved = (manifest.training or {}).get("config", {})
    known = {f.name for f in fields(ClassifierTraining)}
    return ClassifierTraining(**{k: v for k, v in saved.items() if k in known})


def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted == labels)) if len(labels) else 0.0
