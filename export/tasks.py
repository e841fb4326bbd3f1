"""The export stage's task table: the torch-side facts of each task, one frozen row per task.

It completes the runtime's registry (:data:`bertrt.tasks.TASKS`: folder, runner, outputs, head
kind), which it extends by task name. The pipeline builds one model per row whose recipe
section the recipe has; :mod:`bertrt.export.recipe` reads the sections and their training
settings from here; conversion takes the row's exporter task; validation and ``bertrt
validate`` load the row's model class and apply the row's check; training calls the row's
trainer. The code each row names lives in :mod:`bertrt.export.heads`.

Other modules read :data:`EXPORTS` through :func:`export_spec` and :func:`export_specs`, at call
time. A new task is a row here and one in :data:`bertrt.tasks.TASKS`, plus its runner and head
code.

Example::

    spec = export_spec("classify")
    spec.section, spec.optimum_task    # ('classifier', 'text-classification')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from bertrt.export import heads
from bertrt.export.quantize import Int8Config
from bertrt.export.recipe import ClassifierTraining, QATraining
from transformers import AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from bertrt.errors import ConfigError
from bertrt.types import Task


@dataclass(frozen=True)
class ExportSpec:
    """How the export stage builds, trains and checks one task's model.

    ``section`` is the recipe's ``[section]`` for the model (``[section.training]`` holds its
    ``training`` settings, a frozen dataclass, where it has any); ``model_class`` the
    transformers Auto class that loads it with its head; ``optimum_task`` the exporter's task
    name and ``onnx_config`` an optimum OnnxConfig class where the stock one is not enough;
    ``train`` fine-tunes the head (None: exported as loaded) and ``labels`` are the labels a
    head fine-tuned by it predicts; ``check`` judges a variant's task outputs against PyTorch
    beyond elementwise differences (label or answer agreement). A span head's training
    settings also set the window it serves with (``max_length``, ``doc_stride``). ``int8``
    is how its int8 variant is quantized.
    """

    task: str
    section: str
    model_class: Any
    optimum_task: str
    onnx_config: type | None = None
    training: type | None = None
    train: heads.Trainer | None = None
    labels: Mapping[int, str] | None = None
    check: heads.Check | None = None
    int8: Int8Config = Int8Config()

    @property
    def head_architecture(self) -> str:
        """The suffix of a checkpoint architecture that already carries this head
        (``ForSequenceClassification`` for ``AutoModelForSequenceClassification``); empty for
        a bare encoder."""
        name: str = self.model_class.__name__.removeprefix("AutoModel")
        return name


# Span answers flip on small logit changes, so the QA int8 file is built more carefully than
# the embedder's (benchmarks/README.md, "int8 QA"): activation outliers are smoothed
# into the weights with a strength chosen per product, the embedding tables stay fp32 (a
# gather: no compute to save), and so do the feed-forward output products of the first four
# layers, where the per-layer sensitivity pass found quantization costs the most agreement
# (an error that enters early passes through every later layer). On MiniLM with its QA head
# trained on all of train40, SQuAD heldout8 (benchmarks/README.md, "int8 QA"): answer
# agreement with PyTorch 95.0% with two layers kept, 95.5% with three, 95.6% with four, and
# F1 within 0.5 of PyTorch's only with four (63.49 against 63.43).
SPAN_INT8 = Int8Config(
    keep_fp32=("head", "embeddings"),
    nodes_to_exclude=tuple(f"/bert/encoder/layer.{i}/output/dense/MatMul" for i in range(4)),
    smooth_alpha="auto",
)

# The classifier's int8 file is smoothed too: its label agreement with PyTorch went from 98.5%
# (IMDB) and 98.2% (Rotten Tomatoes) to 99.2% and 99.1%, over the 98.5% that --precision auto
# asks for. The embedder's is left as it is: it meets its budget and W2 embedding speed is
# where bertrt meets sentence-transformers' int8.
LABEL_INT8 = Int8Config(smooth_alpha="auto")

EXPORTS: Mapping[str, ExportSpec] = MappingProxyType({
    spec.task: spec
    for spec in (
        ExportSpec(
            Task.EMBED,
            "embedder",
            AutoModel,
            "feature-extraction",
            onnx_config=heads.EncoderWithPoolerOnnxConfig,
            check=heads.pooler_cosine,
        ),
        ExportSpec(
            Task.CLASSIFY,
            "classifier",
            AutoModelForSequenceClassification,
            "text-classification",
            training=ClassifierTraining,
            train=heads.train_sentiment,
            labels=heads.SENTIMENT_LABELS,
            check=heads.label_agreement,
            int8=LABEL_INT8,
        ),
        ExportSpec(
            Task.QA,
            "qa",
            AutoModelForQuestionAnswering,
            "question-answering",
            training=QATraining,
            train=heads.train_span_head,
            check=heads.answer_agreement,
            int8=SPAN_INT8,
        ),
    )
})


def export_spec(task: str) -> ExportSpec:
    """The export row of ``task``."""
    spec = EXPORTS.get(task)
    if spec is None:
        raise ConfigError(f"The export stage cannot build a {task!r} model; it builds {', '.join(EXPORTS)}.")
    return spec


def export_specs() -> tuple[ExportSpec, ...]:
    """Every row, in the order a bundle's models are built."""
    return tuple(EXPORTS.values())
