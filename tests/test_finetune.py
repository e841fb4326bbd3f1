"""Fine-tuning loops (bertrt.export.finetune) on a tiny random BERT and tasks it can learn in seconds."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from bertrt.export.data import SentimentSplits
from bertrt.export.finetune import (
    classification_accuracy,
    evaluate_qa,
    finetune_classifier,
    finetune_qa,
    predict_answers,
)
from bertrt.export.recipe import ClassifierTraining, QATraining
from bertrt.export.squad import SquadExample
from datasets import Dataset
from transformers import (
    AutoTokenizer,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    set_seed,
)

LABELS = {0: "NEGATIVE", 1: "POSITIVE"}
FILLER = [
    "the",
    "film",
    "was",
    "one",
    "of",
    "the",
    "movies",
    "this",
    "year",
    "and",
    "it",
    "had",
    "a",
    "plot",
    "with",
    "actors",
]


def sentiment_texts(rng: random.Random, n: int) -> Dataset:
    """Reviews whose label is told by one word: "great" / "love" (1) or "bad" / "hate" (0)."""
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, 8)
        words.insert(rng.randrange(len(words)), rng.choice(["great", "love"] if label else ["bad", "hate"]))
        texts.append(" ".join(words))
        labels.append(label)
    return Dataset.from_dict({"text": texts, "label": labels})


def city_questions(rng: random.Random, n: int, prefix: str) -> list[SquadExample]:
    """Paragraphs with "paris" at a random place; the answer is always that word."""
    examples = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randrange(10, 90))]
        at = rng.randrange(len(words))
        context = " ".join(words[:at] + ["paris"] + words[at:])
        start = len(" ".join(words[:at] + [""])) if at else 0
        examples.append(SquadExample(f"{prefix}{i}", "what city?", context, ["paris"], [start]))
    return examples


@pytest.fixture()
def tokenizer(tiny_source: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_source)


def test_finetune_classifier_learns_and_reports(tiny_source: Path, tokenizer: Any, tmp_path: Path) -> None:
    rng = random.Random(0)
    splits = SentimentSplits(sentiment_texts(rng, 96), sentiment_texts(rng, 40), sentiment_texts(rng, 20))
    cfg = ClassifierTraining(
        train_size=96,
        heldout_size=40,
        rotten_tomatoes_size=20,
        max_length=32,
        epochs=6,
        learning_rate=3e-3,
        batch_size=16,
    )
    set_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_source, num_labels=2, id2label=LABELS)
    before = model.classifier.weight.detach().clone()
    metrics = finetune_classifier(model, tokenizer, splits, cfg, tmp_path / "work", eval_max_length=48)
    assert (metrics["max_length"], metrics["eval_max_length"]) == (32, 48)
    assert metrics["imdb_heldout_accuracy"] >= 0.9
    assert metrics["rotten_tomatoes_accuracy"] >= 0.9
    assert (metrics["train_examples"], metrics["heldout_examples"], metrics["rotten_tomatoes_examples"]) == (96, 40, 20)
    assert (metrics["epochs"], metrics["learning_rate"]) == (6, 3e-3)
    # a tiny model can score in under a millisecond: the time is recorded, not necessarily > 0
    assert metrics["train_seconds"] > 0 and metrics["eval_seconds"] >= 0
    assert not model.training  # ready to export
    assert math.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 0
    assert not torch.equal(before, model.classifier.weight)
    assert not list((tmp_path / "work").glob("checkpoint-*"))  # nothing saved


def test_classification_accuracy_counts_argmax_matches(tiny_source: Path, tokenizer: Any) -> None:
    set_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_source, num_labels=2)
    texts = ["a good film", "bad", "the plot had one actor and it was very long indeed", "love"]
    predicted = [int(model(**tokenizer(t, return_tensors="pt")).logits.argmax()) for t in texts]
    assert classification_accuracy(model, tokenizer, texts, predicted, 32, batch_size=3) == 1.0
    flipped = [1 - p for p in predicted[:2]] + predicted[2:]
    assert classification_accuracy(model, tokenizer, texts, flipped, 32, batch_size=3) == 0.5


def test_finetune_qa_learns_and_evaluates(tiny_source: Path, tokenizer: Any, tmp_path: Path) -> None:
    rng = random.Random(1)
    train, held = city_questions(rng, 80, "t"), city_questions(rng, 24, "h")
    cfg = QATraining(max_length=48, doc_stride=16, epochs=3, learning_rate=3e-3, batch_size=16, eval_size=20)
    set_seed(0)
    model = BertForQuestionAnswering.from_pretrained(tiny_source)
    untrained = evaluate_qa(model, tokenizer, held, cfg)
    metrics = finetune_qa(model, tokenizer, train, cfg, tmp_path / "work")
    assert metrics["train_examples"] == 80
    assert metrics["train_features"] > 80  # long paragraphs span several windows
    assert (metrics["max_length"], metrics["doc_stride"], metrics["epochs"]) == (48, 16, 3)
    assert math.isfinite(metrics["train_loss"])
    assert not model.training
    scores = evaluate_qa(model, tokenizer, held, cfg)
    assert scores["count"] == 20 == untrained["count"]
    assert scores["f1"] >= 80 > untrained["f1"]
    assert scores["exact_match"] <= scores["f1"]


def test_predicted_answers_come_from_their_context(tiny_source: Path, tokenizer: Any) -> None:
    set_seed(0)
    model = BertForQuestionAnswering.from_pretrained(tiny_source)
    examples = city_questions(random.Random(2), 10, "p")
    predictions = predict_answers(model, tokenizer, examples, max_length=40, doc_stride=8, max_answer_length=3)
    assert set(predictions) == {e.id for e in examples}
    for e in examples:
        assert predictions[e.id] and predictions[e.id] in e.context
        assert len(predictions[e.id].split()) <= 3
