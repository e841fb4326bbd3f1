"""Task accuracy of PyTorch and every bertrt variant side by side: the engine of `bertrt eval`.

Classification is scored on the held-out IMDB reviews the export never trained on (the same
seeded split) and on Rotten Tomatoes sentences; QA on a SQuAD-format file with SQuAD EM/F1 and
the runtime's own long-context windowing. Each bertrt variant is also compared with PyTorch
answer for answer (label agreement, identical answer text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from bertrt.export.finetune import predict_answers, predict_labels
from bertrt.export.recipe import ClassifierTraining
from bertrt.export.revalidate import load_torch_model
from bertrt.export.squad import SquadExample, load_squad, squad_scores
from bertrt.export.variants import variant_runs_here
from tqdm.auto import tqdm

import bertrt
from bertrt.errors import ConfigError
from bertrt.manifest import ModelManifest
from bertrt.types import Device, Precision, Task

CHUNK = 64  # texts per runtime call, so the progress bar moves


@dataclass(frozen=True)
class EvalConfig:
    """What `bertrt eval` scores: the ``task`` model (classify or qa) of the bundle at
    ``bundle``; QA on the SQuAD-format file ``data``. ``limit`` keeps the first N examples
    of each data set; ``progress`` shows progress bars on stderr."""

    task: Task
    bundle: Path
    data: Path | None = None
    limit: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in (Task.CLASSIFY, Task.QA):
            raise ConfigError(f"eval scores the classify or the qa model, not {self.task.value}.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be 1 or more, got {self.limit}.")


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """The report of :func:`eval_qa` or :func:`eval_classify`, as ``config.task`` says."""
    if config.task is Task.CLASSIFY:
        return eval_classify(config.bundle, config.limit, config.progress)
    if config.data is None or not config.data.is_file():
        raise ConfigError("--task qa needs --data pointing at a SQuAD-format JSON file.")
    return eval_qa(config.bundle, config.data, config.limit, config.progress)


def runnable_precisions(model_dir: Path) -> list[Precision]:
    """The variants of a model that this machine can run."""
    manifest = ModelManifest.read(model_dir)
    return [p for p in manifest.variants if variant_runs_here(p)[0]]


def eval_classify(bundle_dir: Path, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Accuracy of PyTorch and each variant on held-out IMDB and Rotten Tomatoes."""
    from bertrt.export.data import load_sentiment

    model_dir = bertrt.load(bundle_dir).model_dir(Task.CLASSIFY)
    manifest = ModelManifest.read(model_dir)
    splits = load_sentiment(_training_config(manifest))
    model, tokenizer = load_torch_model(model_dir, Task.CLASSIFY)
    datasets = {"imdb_heldout": splits.heldout_imdb, "rotten_tomatoes": splits.rotten_tomatoes}
    report: dict[str, Any] = {"task": "classify", "datasets": {}}
    for name, table in datasets.items():
        rows = table.select(range(min(limit, len(table)))) if limit else table
        texts, labels = list(rows["text"]), np.asarray(rows["label"])
        reference = predict_labels(model, tokenizer, texts, manifest.max_length)
        systems: dict[str, Any] = {"pytorch": {"accuracy": _accuracy(reference, labels)}}
        for precision in runnable_precisions(model_dir):
            runner = bertrt.load(bundle_dir, device=Device.CPU, precision=precision).classifier
            label_ids = {label: i for i, label in enumerate(manifest.labels or ())}
            predicted = _in_chunks(
                texts,
                partial(_label_ids, runner, label_ids),
                f"{name} {precision.value}",
                progress,
            )
            systems[f"bertrt-{precision.value}"] = {
                "accuracy": _accuracy(predicted, labels),
                "label_agreement": float(np.mean(predicted == reference)),
            }
        report["datasets"][name] = {"count": len(texts), "systems": systems}
    return report


def eval_qa(bundle_dir: Path, data: Path, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """SQuAD EM/F1 of PyTorch and each variant, and how often each variant's answer equals PyTorch's."""
    model_dir = bertrt.load(bundle_dir).model_dir(Task.QA)
    manifest = ModelManifest.read(model_dir)
    examples = load_squad(data, limit=limit)
    model, tokenizer = load_torch_model(model_dir, Task.QA)
    reference = predict_answers(model, tokenizer, examples, manifest.max_length, manifest.doc_stride or 128)
    systems: dict[str, Any] = {"pytorch": squad_scores(reference, examples)}
    for precision in runnable_precisions(model_dir):
        runner = bertrt.load(bundle_dir, device=Device.CPU, precision=precision).qa
        predicted = _answer_all(runner, examples, f"qa {precision.value}", progress)
        scores = squad_scores(predicted, examples)
        scores["answer_agreement"] = float(np.mean([predicted[e.id] == reference[e.id] for e in examples]))
        systems[f"bertrt-{precision.value}"] = scores
    return {"task": "qa", "data": str(data), "count": len(examples), "trained": manifest.trained, "systems": systems}


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


def _label_ids(runner: Callable[[list[str]], list[Any]], label_ids: dict[str, int], texts: list[str]) -> np.ndarray:
    """The id of the label ``runner`` gives each text."""
    return np.array([label_ids[result.label] for result in runner(texts)])


def _training_config(manifest: ModelManifest) -> ClassifierTraining:
    """The split settings the classifier was trained with, so its held-out set stays unseen."""
    saved = (manifest.training or {}).get("config", {})
    known = {f.name for f in fields(ClassifierTraining)}
    return ClassifierTraining(**{k: v for k, v in saved.items() if k in known})


def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted == labels)) if len(labels) else 0.0
