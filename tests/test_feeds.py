"""Model feeds (bertrt.feeds): one padding helper and one pad-id rule for every place that feeds a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from bertrt.errors import InputError
from bertrt.feeds import DEFAULT_PAD_ID, pad_rows, pad_token_id
from bertrt.qa_windows import encode_qa
from bertrt.tokenizer import TOKENIZER_FILE, TextTokenizer

# [PAD] deliberately not at id 0, so a site that pads with a hard-coded 0 shows up.
VOCAB = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "paris", "is", "in", "france", "where", "?", "."]


def word_tokenizer(vocab: list[str] = VOCAB) -> Tokenizer:
    """A whitespace WordLevel tokenizer with BERT's [CLS]/[SEP] template."""
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    return tokenizer


def test_rows_are_right_padded_with_their_type_ids() -> None:
    batch = pad_rows([np.array([1, 4, 2]), [1, 2]], pad_id=3, type_ids=[[0, 0, 0], [0, 1]])
    assert batch.input_ids.tolist() == [[1, 4, 2], [1, 2, 3]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch.token_type_ids.tolist() == [[0, 0, 0], [0, 1, 0]]
    assert all(a.dtype == np.int64 for a in batch.feeds().values())
    assert list(batch.feeds()) == ["input_ids", "attention_mask", "token_type_ids"]


def test_rows_pad_to_a_wider_width_and_type_ids_default_to_zero() -> None:
    batch = pad_rows([[5, 6]], pad_id=0, width=4)
    assert batch.input_ids.tolist() == [[5, 6, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 0, 0]]
    assert batch.token_type_ids.tolist() == [[0, 0, 0, 0]]
    assert pad_rows([], pad_id=0).input_ids.shape == (0, 0)


def test_bad_padding_requests_raise_input_error() -> None:
    with pytest.raises(InputError, match="to width 2; pass 3 or more"):
        pad_rows([[1, 2, 3]], pad_id=0, width=2)
    with pytest.raises(InputError, match="2 rows of token ids but 1 of type ids"):
        pad_rows([[1], [2]], pad_id=0, type_ids=[[0]])


def test_the_pad_id_rule_prefers_padding_settings_then_pad_token_then_config(tmp_path: Path) -> None:
    tokenizer = word_tokenizer()
    tokenizer.enable_padding(pad_id=7, pad_token="[PAD]")
    assert pad_token_id(tokenizer) == 7
    tokenizer.no_padding()
    assert pad_token_id(tokenizer) == VOCAB.index("[PAD]")
    without_pad = word_tokenizer([t for t in VOCAB if t != "[PAD]"])
    assert pad_token_id(without_pad, tmp_path) == DEFAULT_PAD_ID == 0
    (tmp_path / "config.json").write_text(json.dumps({"pad_token_id": 5}), encoding="utf-8")
    assert pad_token_id(without_pad, tmp_path) == 5


def test_texts_qa_windows_and_calibration_pad_with_the_same_id(tmp_path: Path) -> None:
    from bertrt.export.quantize import calibration_feeds

    word_tokenizer().save(str(tmp_path / TOKENIZER_FILE))
    pad = VOCAB.index("[PAD]")
    texts = TextTokenizer.from_dir(tmp_path, max_length=16)
    batch = texts.pad(texts.encode(["paris is in france .", "where ?"]))
    windows = encode_qa(texts.fresh(), ["where ?", "where ?"], ["paris is in france .", "paris ."], 16, 4)
    [calibration] = calibration_feeds(tmp_path / TOKENIZER_FILE, ["paris is in france .", "where ?"], 16)
    for feeds in (batch.feeds(), windows.feeds(), calibration):
        padding = feeds["attention_mask"] == 0
        assert padding.any() and (feeds["input_ids"][padding] == pad).all()
        assert (feeds["token_type_ids"][padding] == 0).all()
    np.testing.assert_array_equal(calibration["input_ids"], batch.input_ids)
