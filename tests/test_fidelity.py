"""Every variant answers the same whatever shares its batch, and eval runs end to end."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertrt import Classifier, Embedder, Pooling, QuestionAnswerer, RuntimeOptions
from bertrt.types import Precision

# One request = one batch, in the caller's order: padding is decided by the batch make-up alone.
ONE_BATCH = RuntimeOptions(batch_size=64, group_by_length=False)
TEXT = "the film was good and the actors were great"
SHORT = ["a", "bad plot", "i love paris", "what a film"]
LONG = " ".join(["the story of the city"] * 60)  # > 256 tokens: pads the batch to the maximum
PRECISIONS = [Precision.FP32, Precision.FP16, Precision.INT8]


def _three_ways(run: Any) -> list[np.ndarray]:
    """The output for TEXT alone, among short texts, and in a batch padded to max length."""
    alone = run([TEXT])[0]
    among_short = run([*SHORT, TEXT])[-1]
    padded = run([LONG, TEXT])[-1]
    return [alone, among_short, padded]


def _vectors(embedder: Embedder, pooling: Pooling, texts: list[str]) -> list[np.ndarray]:
    return [e.vector for e in embedder(texts, pooling=pooling)]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_embeddings_do_not_depend_on_batch_make_up(tiny_bundle: Path, precision: Precision) -> None:
    embedder = Embedder(tiny_bundle / "embedder", device="cpu", precision=precision, options=ONE_BATCH)
    for pooling in (Pooling.MEAN, Pooling.POOLER):
        alone, among_short, padded = _three_ways(partial(_vectors, embedder, pooling))
        np.testing.assert_allclose(among_short, alone, atol=1e-5)
        np.testing.assert_allclose(padded, alone, atol=1e-5)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_class_probabilities_do_not_depend_on_batch_make_up(tiny_bundle: Path, precision: Precision) -> None:
    classifier = Classifier(tiny_bundle / "classifier", device="cpu", precision=precision, options=ONE_BATCH)

    def probabilities(texts: list[str]) -> list[np.ndarray]:
        return [np.array(list(c.probabilities.values())) for c in classifier(texts)]

    alone, among_short, padded = _three_ways(probabilities)
    np.testing.assert_allclose(among_short, alone, atol=1e-5)
    np.testing.assert_allclose(padded, alone, atol=1e-5)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_qa_answers_do_not_depend_on_batch_make_up(tiny_bundle: Path, precision: Precision) -> None:
    qa = QuestionAnswerer(tiny_bundle / "qa", device="cpu", precision=precision, options=ONE_BATCH)
    question, context = "what is the capital of france?", "paris is the capital of france. " * 3
    alone = qa([question], [context], top_k=3)[0]
    beside_long = qa(["who?", question], [LONG, context], top_k=3)[1]
    assert [(a.start, a.end) for a in beside_long.answers] == [(a.start, a.end) for a in alone.answers]
    np.testing.assert_allclose([a.score for a in beside_long.answers], [a.score for a in alone.answers], atol=1e-5)


def test_int8_variant_is_smaller_and_validated(tiny_bundle: Path) -> None:
    manifest = json.loads((tiny_bundle / "classifier" / "manifest.json").read_text())
    int8 = manifest["variants"]["int8"]
    assert int8["validation"]["passed"] is True and int8["validation"]["label_agreement"] >= 0.9
    assert int8["optimization"]["scheme"] == "static" and int8["optimization"]["batch_invariance_gap"] <= 1e-5
    fp32 = manifest["variants"]["fp32"]
    assert fp32["optimization"]["fused_operators"]["Attention"] > 0
    sizes = {p: (tiny_bundle / "classifier" / v["file"]).stat().st_size for p, v in manifest["variants"].items()}
    # Weights stored in 8 bits instead of 32 (even a tiny model's embeddings and head stay fp32).
    assert sizes["int8"] < 0.6 * sizes["fp32"], sizes
    assert manifest["variants"]["fp16"]["validation"]["ran"] is False  # no GPU here: recorded, not faked


def test_eval_qa_compares_pytorch_with_every_variant(tiny_bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bertrt.cli import app

    data = {
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": "paris is the capital of france. the film was good.",
                        "qas": [
                            {
                                "id": "1",
                                "question": "what is the capital of france?",
                                "answers": [{"text": "paris", "answer_start": 0}],
                            },
                            {
                                "id": "2",
                                "question": "what was good?",
                                "answers": [{"text": "the film", "answer_start": 32}],
                            },
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(
        app, ["eval", "--task", "qa", "--data", str(path), "--models", str(tiny_bundle), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["count"] == 2 and set(report["systems"]) == {"pytorch", "bertrt-fp32", "bertrt-int8"}
    assert report["systems"]["bertrt-fp32"]["answer_agreement"] == 1.0
    assert report["systems"]["bertrt-fp32"]["f1"] == report["systems"]["pytorch"]["f1"]


def test_eval_classify_reports_accuracy_and_agreement(tiny_bundle: Path) -> None:
    from typer.testing import CliRunner

    from bertrt.cli import app

    result = CliRunner().invoke(
        app, ["eval", "--task", "classify", "--limit", "40", "--models", str(tiny_bundle), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for dataset in ("imdb_heldout", "rotten_tomatoes"):
        systems = report["datasets"][dataset]["systems"]
        assert report["datasets"][dataset]["count"] == 40
        assert systems["bertrt-fp32"]["label_agreement"] == 1.0
        assert systems["bertrt-fp32"]["accuracy"] == systems["pytorch"]["accuracy"]
        assert 0.0 <= systems["bertrt-int8"]["accuracy"] <= 1.0


def test_eval_qa_without_data_says_what_to_pass(tiny_bundle: Path) -> None:
    from typer.testing import CliRunner

    from bertrt.cli import app

    result = CliRunner().invoke(app, ["eval", "--task", "qa", "--models", str(tiny_bundle)])
    assert result.exit_code == 2 and "--data" in result.stderr


def test_qa_variants_are_judged_by_exact_spans_and_by_overlap(tiny_bundle: Path) -> None:
    from bertrt.export import heads, validate
    from tokenizers import Tokenizer

    from bertrt.qa_windows import encode_qa

    context = "paris is the capital of france and the seine flows through paris"
    tokenizer = Tokenizer.from_file(str(tiny_bundle / "qa" / "tokenizer.json"))
    windows = encode_qa(tokenizer, ["where?"] * 4, [context] * 4, 64, 16)

    def logits(spans: list[str]) -> dict[str, np.ndarray]:
        """Start/end logits that make each pair's best answer the given words of the context."""
        start, end = np.zeros((2, *windows.input_ids.shape), dtype=np.float32)
        for row, words in enumerate(spans):
            begin = context.index(words)
            start[row, np.flatnonzero(windows.context_mask[row] & (windows.offsets[row, :, 0] == begin))[0]] = 9
            end[
                row, np.flatnonzero(windows.context_mask[row] & (windows.offsets[row, :, 1] == begin + len(words)))[0]
            ] = 9
        return {"start_logits": start, "end_logits": end}

    expected = ["capital of france", "the seine", "paris", "capital"]
    reference = validate.Reference(feeds={}, outputs=logits(expected), contexts=(context,) * 4, windows=windows)
    # One span gains a word, one loses one: half the spans differ, yet the answers mostly overlap.
    agreement, overlap = heads.span_agreement(
        reference, logits(["capital of france", "seine", "paris", "capital of"])
    )
    assert agreement == 0.5
    assert overlap == pytest.approx((1 + 1 + 1 + 2 / 3) / 4)  # "seine" vs "the seine": articles are ignored
    assert validate.INT8.min_answer_overlap is not None and overlap >= validate.INT8.min_answer_overlap
    _, unrelated = heads.span_agreement(reference, logits(["paris", "paris", "france", "seine"]))
    assert unrelated < validate.INT8.min_answer_overlap
