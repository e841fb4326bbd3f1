"""Tiny random BERT sources for tests and smoke runs: a local folder a recipe can point at.

The folder looks exactly like a downloaded checkpoint (config.json, model.safetensors and a
WordPiece tokenizer), so tests drive the real export code path in seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = [
    "the", "a", "an", "of", "to", "and", "in", "is", "was", "it", "that", "this", "for", "on", "with", "as",
    "by", "at", "from", "be", "are", "were", "i", "you", "he", "she", "they", "we", "his", "her", "their",
    "its", "not", "no", "but", "or", "if", "so", "very", "good", "great", "bad", "love", "hate", "film",
    "movie", "plot", "actor", "actors", "story", "paris", "city", "france", "capital", "immune", "system",
    "body", "disease", "cells", "what", "who", "where", "when", "why", "how", "which", "did", "does", "do",
    "have", "has", "had", "one", "two", "three", "first", "last", "new", "old", "year", "years", "time",
]
_LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()")


def tiny_vocab() -> list[str]:
    """A small WordPiece vocabulary: specials, common words, characters and ``##`` suffix characters."""
    # dict.fromkeys drops repeats ("a", "i" are words and letters) while keeping order.
    return list(dict.fromkeys(_SPECIAL + _WORDS + _LETTERS + [f"##{c}" for c in _LETTERS]))


def tiny_config(vocab_size: int, **overrides: int) -> BertConfig:
    """A BERT config small enough to export and validate in well under a second."""
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=512,
        type_vocab_size=2,
    )
    settings.update(overrides)
    return BertConfig(**settings)


def write_tiny_source(folder: Path, seed: int = 0) -> Path:
    """Write a random tiny ``BertModel`` with its tokenizer into ``folder``; return the folder.

    >>> # recipe source = str(write_tiny_source(tmp_path / "tiny"))
    """
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=512)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    model = BertModel(tiny_config(len(vocab)))
    model.save_pretrained(folder, safe_serialization=True)
    return folder
