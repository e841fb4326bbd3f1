"""The export stage's code for each task's head: what its graph outputs, how it is trained,
and how a variant's outputs are judged against PyTorch beyond elementwise differences.

The rows of :data:`bertrt.export.tasks.EXPORTS` name these functions; the pipeline and the
validator call them through the rows, never by task.

A trainer takes a :class:`TrainingJob` and returns ``(training metrics or None, whether the
head is trained)``. A check takes the PyTorch :class:`~bertrt.export.validate.Reference`, the
ONNX file's outputs on the same inputs and the precision's tolerance, and returns the report
entries it measured and its failures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from bertrt.export.recipe import ModelRecipe
from optimum.exporters.onnx.model_configs import BertOnnxConfig

from bertrt.errors import ConfigError
from bertrt.qa_decode import decode_answers

if TYPE_CHECKING:
    from bertrt.export.pipeline import ExportOptions
    from bertrt.export.validate import Reference, Tolerance

Log = Callable[[str], None]
Trained = tuple[dict[str, Any] | None, bool]
CheckResult = tuple[dict[str, float], list[str]]

SENTIMENT_LABELS = {0: "NEGATIVE", 1: "POSITIVE"}


@dataclass(frozen=True)
class TrainingJob:
    """One head to fine-tune: the loaded model and tokenizer, the recipe's model section and
    its training settings, the export's options (data files), the length the model serves,
    a scratch folder and the progress log."""

    model: Any
    tokenizer: Any
    recipe: ModelRecipe
    settings: Any
    options: ExportOptions
    serving_length: int
    work: Path
    log: Log


Trainer = Callable[[TrainingJob], Trained]
Check = Callable[["Reference", Mapping[str, np.ndarray], "Tolerance"], CheckResult]


# --- the encoder ---------------------------------------------------------------------------


class EncoderWithPoolerOnnxConfig(BertOnnxConfig):
    """optimum's BERT feature-extraction config plus ``pooler_output``.

    The stock config exports only ``last_hidden_state``; the base model also serves the
    pooled ``[CLS]`` vector (dense + tanh), as a ``BertModel`` call returns it.
    """

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        outputs = dict(super().outputs)
        outputs["pooler_output"] = {0: "batch_size"}
        return outputs


def pooler_cosine(reference: Reference, outputs: Mapping[str, np.ndarray], tolerance: Tolerance) -> CheckResult:
    """The smallest cosine between PyTorch's and the file's pooled vectors, where the
    tolerance sets a floor (int8, whose elementwise differences are not bounded)."""
    if tolerance.min_cosine is None:
        return {}, []
    expected, actual = reference.outputs["pooler_output"], outputs["pooler_output"]
    num = (expected * actual).sum(-1)
    den = np.linalg.norm(expected, axis=-1) * np.linalg.norm(actual, axis=-1) + 1e-12
    cosine = float((num / den).min())
    failures = [f"pooler cosine {cosine:.4f} < {tolerance.min_cosine}"] if cosine < tolerance.min_cosine else []
    return {"min_cosine_pooler": cosine}, failures


# --- the sentiment classifier --------------------------------------------------------------


def train_sentiment(job: TrainingJob) -> Trained:
    """Fine-tune the classifier on balanced IMDB reviews and score both held-out sets."""
    from bertrt.export.data import load_sentiment
    from bertrt.export.finetune import finetune_classifier

    splits = load_sentiment(job.settings, job.options.sentiment_csv)
    job.log(f"      fine-tuning on {len(splits.train)} IMDB reviews")
    metrics = finetune_classifier(job.model, job.tokenizer, splits, job.settings, job.work, job.serving_length)
    # The split settings let `bertrt eval` rebuild the same never-trained-on held-out set.
    metrics["config"] = asdict(job.settings)
    job.log(
        f"      held-out IMDB accuracy {metrics['imdb_heldout_accuracy']:.2%}, "
        f"Rotten Tomatoes {metrics['rotten_tomatoes_accuracy']:.2%}"
    )
    return metrics, True


def label_agreement(reference: Reference, outputs: Mapping[str, np.ndarray], tolerance: Tolerance) -> CheckResult:
    """The share of texts whose best label is PyTorch's."""
    agreement = float(np.mean(reference.outputs["logits"].argmax(-1) == outputs["logits"].argmax(-1)))
    failures = (
        [f"label agreement {agreement:.3f} < {tolerance.min_label_agreement}"]
        if agreement < tolerance.min_label_agreement
        else []
    )
    return {"label_agreement": agreement}, failures


# --- the extractive QA head ----------------------------------------------------------------


def train_span_head(job: TrainingJob) -> Trained:
    """Fine-tune the span head on ``--qa-data`` (any SQuAD source); without data, export it
    untrained unless the recipe insists on training."""
    options = job.options
    if options.qa_data is None:
        if job.recipe.finetune is True:
            raise ConfigError("The recipe fine-tunes the QA model; pass SQuAD-format training data with --qa-data.")
        job.log("      no --qa-data: exporting the untrained span head (marked trained: false)")
        return None, False
    from bertrt.export.finetune import evaluate_qa, finetune_qa
    from bertrt.export.squad import SquadSource, load_squad

    source = SquadSource.parse(options.qa_data)
    examples = load_squad(source, limit=job.settings.max_examples)
    job.log(f"      fine-tuning on {len(examples)} questions from {source.name}")
    metrics = finetune_qa(job.model, job.tokenizer, examples, job.settings, job.work)
    metrics["config"] = asdict(job.settings)
    metrics["data"] = source.name
    if options.qa_eval_data is not None:
        eval_source = SquadSource.parse(options.qa_eval_data)
        held = load_squad(eval_source, limit=job.settings.eval_size)
        scores = evaluate_qa(job.model, job.tokenizer, held, job.settings)
        metrics["eval"] = {"data": eval_source.name, **scores}
        job.log(f"      {eval_source.name}: EM {scores['exact_match']:.1f}, F1 {scores['f1']:.1f}")
    return metrics, True


def answer_agreement(reference: Reference, outputs: Mapping[str, np.ndarray], tolerance: Tolerance) -> CheckResult:
    """The share of pairs answered with exactly PyTorch's span, and the answers' mean overlap."""
    agreement, overlap = span_agreement(reference, outputs)
    failures = []
    if agreement < tolerance.min_answer_agreement:
        failures.append(f"answer agreement {agreement:.3f} < {tolerance.min_answer_agreement}")
    if tolerance.min_answer_overlap is not None and overlap < tolerance.min_answer_overlap:
        failures.append(f"answer overlap {overlap:.3f} < {tolerance.min_answer_overlap}")
    return {"answer_agreement": agreement, "answer_overlap": overlap}, failures


def span_agreement(reference: Reference, outputs: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """Share of pairs with exactly PyTorch's best span, and the mean token F1 of the two answers."""
    from bertrt.export.squad import f1_score

    contexts = list(reference.contexts)
    expected = decode_answers(
        reference.outputs["start_logits"], reference.outputs["end_logits"], reference.windows, contexts
    )
    actual = decode_answers(outputs["start_logits"], outputs["end_logits"], reference.windows, contexts)
    same = [(e[0].start, e[0].end) == (a[0].start, a[0].end) for e, a in zip(expected, actual, strict=True)]
    overlap = [
        1.0 if a[0].text == e[0].text else f1_score(a[0].text, e[0].text)
        for e, a in zip(expected, actual, strict=True)
    ]
    return float(np.mean(same)), float(np.mean(overlap))
