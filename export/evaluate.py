"""Task accuracy of PyTorch and every bertrt variant side by side: the engine of `bertrt eval`.

Classification is scored on the held-out IMDB reviews the export never trained on (the same
seeded split) and on Rotten Tomatoes sentences; QA on a SQuAD-format file with SQuAD EM/F1 and
the runtime's own long-context windowing. Each bertrt variant is also compared with PyTorch
answer for answer (label agreement, identical answer text). Each variant runs where
:func:`~bertrt.export.variants.validation_device` places it for ``--device``; the report
names the device of each, and the variants it could not run here with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from bertrt.export.finetune import predict_answers, predict_labels
from bertrt.export.recipe import ClassifierTraining
from bertrt.export.revalidate import load_torch_model
from bertrt.export.squad import SquadExample, check_squad_source, load_squad, squad_scores
from bertrt.export.variants import Placement, validation_device
from tqdm.auto import tqdm

import bertrt
from bertrt.errors import ConfigError
from bertrt.manifest import ModelManifest
from bertrt.types import Device, Precision, Task

CHUNK = 64  # texts per runtime call, so the progress bar moves


@dataclass(frozen=True)
class EvalConfig:
    """What `bertrt eval` scores: the ``task`` model (classify or qa) of the bundle at
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
        if self.task not in (Task.CLASSIFY, Task.QA):
            raise ConfigError(f"eval scores the classify or the qa model, not {self.task.value}.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be 1 or more, got {self.limit}.")


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """The report of :func:`eval_qa` or :func:`eval_classify`, as ``config.task`` says."""
    if config.task is Task.CLASSIFY:
        return eval_classify(config.bundle, config.limit, config.progress, config.device)
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
