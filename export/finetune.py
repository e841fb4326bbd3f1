"""Fine-tuning of the sentiment and QA heads with the Hugging Face ``Trainer``, and their scores.

The QA head is scored through :mod:`bertrt.qa_windows` and :mod:`bertrt.qa_decode`, so
PyTorch answers are windowed and decoded exactly as the runtime decodes ONNX outputs.

Example::

    model = BertForSequenceClassification.from_pretrained(path, num_labels=2, id2label=..., label2id=...)
    metrics = finetune_classifier(model, tokenizer, load_sentiment(cfg), cfg, Path("work"))
    metrics["imdb_heldout_accuracy"]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bertrt.export.data import SentimentSplits
from bertrt.export.recipe import ClassifierTraining, QATraining
from bertrt.export.squad import SquadExample, build_qa_train_features, squad_scores
from datasets import Dataset
from tokenizers import Tokenizer
from transformers import (
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from bertrt.errors import ExportError
from bertrt.qa_decode import DecodeOptions, decode_answers
from bertrt.qa_windows import QAWindows, encode_qa

# Inference batches hold no activations for backward, so they can be larger than training ones.
EVAL_BATCH_SIZE = 64
# QA examples windowed per encode_qa call during evaluation (sorted by length, so little padding).
QA_EVAL_CHUNK = 256
MAX_ANSWER_LENGTH = 30


def finetune_classifier(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    splits: SentimentSplits,
    cfg: ClassifierTraining,
    work_dir: Path,
    eval_max_length: int | None = None,
) -> dict[str, Any]:
    """Train a two-label sequence classifier on ``splits.train``, then score both held-out sets.

    Training truncates reviews at ``cfg.max_length``; scoring truncates at ``eval_max_length``
    (default: the same), which should be the length the exported model serves. Training
    shorter than serving is the cheap way to fit the CPU budget: the model still reads, and
    profits from, the longer reviews it serves.

    The caller sets ``id2label`` (``{0: "NEGATIVE", 1: "POSITIVE"}``). Nothing is saved under
    ``work_dir``; the trained weights stay in ``model``. Returns a JSON-ready dict.
    """
    eval_length = eval_max_length or cfg.max_length
    train = splits.train.map(
        _tokenize_texts,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "max_length": cfg.max_length},
        remove_columns=["text"],
        keep_in_memory=True,
    ).rename_column("label", "labels")
    seconds, loss = _train(model, tokenizer, train, work_dir, cfg.epochs, cfg.learning_rate, cfg.batch_size, cfg.seed)
    imdb = splits.heldout_imdb
    rotten = splits.rotten_tomatoes
    started = time.perf_counter()
    imdb_accuracy = classification_accuracy(model, tokenizer, imdb["text"], imdb["label"], eval_length)
    rotten_accuracy = (
        classification_accuracy(model, tokenizer, rotten["text"], rotten["label"], eval_length) if len(rotten) else None
    )
    return {
        "imdb_heldout_accuracy": imdb_accuracy,
        "rotten_tomatoes_accuracy": rotten_accuracy,
        "train_examples": len(splits.train),
        "heldout_examples": len(imdb),
        "rotten_tomatoes_examples": len(rotten),
        "epochs": cfg.epochs,
        "learning_rate": cfg.learning_rate,
        "batch_size": cfg.batch_size,
        "max_length": cfg.max_length,
        "eval_max_length": eval_length,
        "train_seconds": round(seconds, 1),
        "eval_seconds": round(time.perf_counter() - started, 3),
        "train_loss": loss,
    }


def finetune_qa(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[SquadExample],
    cfg: QATraining,
    work_dir: Path,
) -> dict[str, Any]:
    """Train an extractive-QA head on SQuAD examples (the first ``cfg.max_examples`` if set).

    Nothing is saved under ``work_dir``; the trained weights stay in ``model``. Returns a
    JSON-ready dict of the training run.
    """
    examples = examples[: cfg.max_examples] if cfg.max_examples is not None else examples
    features = build_qa_train_features(tokenizer, examples, cfg.max_length, cfg.doc_stride)
    seconds, loss = _train(
        model, tokenizer, features, work_dir, cfg.epochs, cfg.learning_rate, cfg.batch_size, cfg.seed
    )
    return {
        "train_examples": len(examples),
        "train_features": len(features),
        "epochs": cfg.epochs,
        "learning_rate": cfg.learning_rate,
        "batch_size": cfg.batch_size,
        "max_length": cfg.max_length,
        "doc_stride": cfg.doc_stride,
        "train_seconds": round(seconds, 1),
        "train_loss": loss,
    }


def evaluate_qa(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[SquadExample],
    cfg: QATraining,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> dict[str, Any]:
    """Official SQuAD EM/F1 (percent) of the model on the first ``cfg.eval_size`` examples (all if None).

    Example::

        evaluate_qa(model, tokenizer, load_squad(path), QATraining())  # {"exact_match", "f1", "count"}
    """
    examples = examples[: cfg.eval_size] if cfg.eval_size is not None else examples
    predictions = predict_answers(model, tokenizer, examples, cfg.max_length, cfg.doc_stride, max_answer_length)
    return squad_scores(predictions, examples)


def predict_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[SquadExample],
    max_length: int,
    doc_stride: int,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> dict[str, str]:
    """Best answer text of each example by id ("" where no span qualifies)."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    # Similar lengths share a chunk, so its windows carry little padding.
    ordered = sorted(examples, key=lambda e: len(e.context) + len(e.question))
    predictions: dict[str, str] = {}
    for begin in range(0, len(ordered), QA_EVAL_CHUNK):
        chunk = ordered[begin : begin + QA_EVAL_CHUNK]
        contexts = [e.context for e in chunk]
        windows = encode_qa(backend, [e.question for e in chunk], contexts, max_length, doc_stride)
        start, end = qa_logits(model, windows)
        answers = decode_answers(start, end, windows, contexts, DecodeOptions(max_answer_length=max_answer_length))
        predictions.update({e.id: (a[0].text if a else "") for e, a in zip(chunk, answers)})
    return predictions


def qa_logits(
    model: PreTrainedModel, windows: QAWindows, batch_size: int = EVAL_BATCH_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits (float32, ``[n_windows, seq]``) of a QA model on the given windows."""
    device = model.device
    model.eval()
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    inputs = windows.feeds()
    with torch.inference_mode():
        for begin in range(0, windows.n_windows, batch_size):
            batch = {k: torch.from_numpy(v[begin : begin + batch_size]).to(device) for k, v in inputs.items()}
            output = model(**batch)
            starts.append(output.start_logits.float().cpu().numpy())
            ends.append(output.end_logits.float().cpu().numpy())
    return np.concatenate(starts), np.concatenate(ends)


def classification_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    labels: Sequence[int],
    max_length: int,
    batch_size: int = EVAL_BATCH_SIZE,
) -> float:
    """Share of ``texts`` whose argmax label equals ``labels``."""
    if not texts:
        raise ExportError("No texts to score the classifier on; give a non-empty held-out set.")
    predicted = predict_labels(model, tokenizer, texts, max_length, batch_size)
    return float(np.mean(predicted == np.asarray(labels)))


def predict_labels(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = EVAL_BATCH_SIZE,
) -> np.ndarray:
    """Argmax label id of each text (batched, texts of similar length together)."""
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    predicted = np.empty(len(texts), dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for begin in range(0, len(order), batch_size):
            rows = order[begin : begin + batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[r] for r in rows]}, return_tensors="pt")
            # Type ids are all 0 for single texts; padding above does not build them.
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
            logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits
            predicted[rows] = logits.argmax(dim=-1).cpu().numpy()
    return predicted


def _tokenize_texts(batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerFast, max_length: int) -> Any:
    return tokenizer(batch["text"], truncation=True, max_length=max_length)


def _train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    train: Dataset,
    work_dir: Path,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    seed: int,
) -> tuple[float, float]:
    """Run the Trainer and leave ``model`` in eval mode; returns (wall seconds, mean training loss)."""
    args = TrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        warmup_ratio=0.1,
        weight_decay=0.01,
        # Batches of similar length waste little compute on padding.
        group_by_length=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        logging_strategy="steps",
        logging_steps=50,
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    model.eval()  # the export traces the model next: dropout must be off
    return seconds, float(output.training_loss)
