"""Whatever arrives, the runtime answers with a defined result or one clear error, and keeps
serving. Each bad input of the hardening list has its case here (the ones already covered by
test_runtime.py and test_cli_run.py are not repeated).

Defined results:

* an empty, blank or control-characters-only text is the empty input ``[CLS] [SEP]`` for the
  embedder and the classifier (as in Hugging Face pipelines); QA needs a question and a
  context, so an empty or blank one is an InputError;
* any script (CJK, right-to-left, emoji, combining marks, zero-width and bidi controls) is
  tokenized as the model's vocabulary allows; QA answers stay exact slices of the context;
* an empty list gives an empty list;
* a text longer than the model window is truncated (``truncated: true``), reading only a
  head of it; a QA context is read whole, window after window, up to ``max_context_chars``;
* a QA context without a readable token has no answers, or the no-answer result when a
  null threshold is set.

The HTTP server answers every hostile request below 500 and keeps serving the same results,
without API keys and with them (where a request without a valid key is a 401 whatever else
is wrong with it).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import bertrt
from bertrt import BundleError, InputError, RuntimeOptions
from bertrt.cli import app
from bertrt.results import Answer
from bertrt.tokenizer import TextTokenizer

pytestmark = pytest.mark.filterwarnings("ignore:The (qa|classify) head")

BLANK = ["", "   ", "\n\t \r", "\x00\x07\x1b"]
SCRIPTS = {
    "cjk": "東京は日本の首都です",
    "arabic": "مرحبا بالعالم",
    "hebrew": "שלום עולם",
    "emoji": "i love paris 😀🎉👍🏽",
    "combining": "cafe\u0301 a\u0308",
    "bidi controls": "a\u200fb\u202ec",
    "zero width": "pa\u200bris",
}
MEGABYTE = ("the film was good and paris is great . " * 30_000)[:1_000_000]
CONTEXT = "paris is the capital of france . the immune system has cells ."


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> bertrt.Bundle:
    return bertrt.load(tiny_bundle, device="cpu").load_all()


@pytest.fixture
def still_serving(bundle: bertrt.Bundle) -> Iterator[None]:
    """After the test's bad calls, every runner still gives the results it gave before."""

    def snapshot() -> list[Any]:
        return [
            [r.to_dict() for r in bundle.embedder(["i love paris", ""])],
            [r.to_dict() for r in bundle.classifier(["i love paris", "a"], top_k=2)],
            [r.to_dict() for r in bundle.qa(["what is paris?"], [CONTEXT], top_k=2)],
        ]

    before = snapshot()
    yield
    assert snapshot() == before


class Spy:
    """A stand-in for a `tokenizers.Tokenizer` that records how much text it was given."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.longest = 0
        self.calls = 0

    def encode_batch(self, inputs: list[str], *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.longest = max([self.longest, *(len(text) for text in inputs)])
        return self.tokenizer.encode_batch(inputs, *args, **kwargs)

    def encode(self, text: str, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.longest = max(self.longest, len(text))
        return self.tokenizer.encode(text, *args, **kwargs)


def spy_on(runner: Any, monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy(runner.tokenizer._tokenizer)
    monkeypatch.setattr(runner.tokenizer, "_tokenizer", spy)
    return spy


# --- defined results ----------------------------------------------------------------------


@pytest.mark.usefixtures("still_serving")
def test_blank_and_control_only_texts_are_the_empty_input(bundle: bertrt.Bundle) -> None:
    embeddings = bundle.embedder(BLANK, pooling="mean")
    assert all(e.tokens == ("[CLS]", "[SEP]") and not e.truncated for e in embeddings)
    assert all(np.array_equal(e.vector, embeddings[0].vector) for e in embeddings)
    assert np.isfinite(embeddings[0].vector).all()
    classes = bundle.classifier(BLANK)
    assert all(c.probabilities == classes[0].probabilities and not c.truncated for c in classes)


@pytest.mark.usefixtures("still_serving")
def test_any_script_embeds_and_classifies(bundle: bertrt.Bundle) -> None:
    texts = list(SCRIPTS.values())
    embeddings = bundle.embedder(texts, normalize=True)
    for embedding in embeddings:
        assert embedding.tokens[0] == "[CLS]" and embedding.tokens[-1] == "[SEP]" and len(embedding.tokens) > 2
        assert np.linalg.norm(embedding.vector) == pytest.approx(1.0, abs=1e-5)
    # In one batch or alone, each text gets its own result (scripts do not bleed).
    alone = [bundle.embedder(text, normalize=True)[0] for text in texts]
    for batched, single in zip(embeddings, alone, strict=True):
        assert batched.tokens == single.tokens
        np.testing.assert_allclose(batched.vector, single.vector, atol=1e-5)
    assert [c.label for c in bundle.classifier(texts)] == [bundle.classifier(t)[0].label for t in texts]


@pytest.mark.usefixtures("still_serving")
def test_qa_answers_slice_back_in_any_script(bundle: bertrt.Bundle) -> None:
    contexts = [f"{text} paris is the capital of france . {text}" for text in SCRIPTS.values()]
    results = bundle.qa(["what is the capital?"] * len(contexts), contexts, top_k=5)
    for context, result in zip(contexts, results, strict=True):
        assert len(result.answers) == 5
        for answer in result.answers:
            assert 0 <= answer.start < answer.end <= len(context)
            assert answer.text == context[answer.start : answer.end]


def test_an_empty_list_is_an_empty_result(bundle: bertrt.Bundle) -> None:
    assert bundle.embedder([]) == [] and bundle.classifier(()) == [] and bundle.qa([], []) == []


@pytest.mark.usefixtures("still_serving")
def test_a_megabyte_text_is_truncated_from_its_head_alone(
    bundle: bertrt.Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = MEGABYTE[:2000]
    spy = spy_on(bundle.classifier, monkeypatch)
    [result] = bundle.classifier(MEGABYTE)
    assert result.truncated and result.probabilities == bundle.classifier(head)[0].probabilities
    # Only a head of the megabyte reached the tokenizer: no time or memory spent on the rest.
    assert 0 < spy.longest <= bundle.classifier.tokenizer.head_chars < 10_000
    [embedding] = bundle.embedder(MEGABYTE)
    assert embedding.truncated and len(embedding.tokens) == bundle.embedder.manifest.max_length
    assert embedding.tokens == bundle.embedder(head)[0].tokens


def test_a_long_single_word_is_read_whole(tiny_bundle: Path) -> None:
    # No word boundary in the head: the head cannot decide, so the full text is tokenized.
    tokenizer = TextTokenizer.from_dir(tiny_bundle / "embedder", max_length=8)
    tokenizer.head_chars = 16
    word = "paris" * 40
    [encoding] = tokenizer.encode([word])
    [full] = TextTokenizer.from_dir(tiny_bundle / "embedder", max_length=8).encode([word])
    assert encoding.tokens == full.tokens == ("[CLS]", "[UNK]", "[SEP]") and not encoding.truncated


# --- malformed calls ----------------------------------------------------------------------

BAD_CALLS: dict[str, tuple[Callable[[bertrt.Bundle], Any], str]] = {
    "None in a list": (lambda b: b.embedder(["ok", None]), r"^Text #1 is NoneType, not str; pass strings only\.$"),
    "int in a list": (lambda b: b.classifier(["ok", "fine", 3]), r"^Text #2 is int, not str"),
    "bytes": (lambda b: b.classifier(b"\xff\xfe"), r"^Expected a text string or a list of them, got bytes\.$"),
    "a generator": (lambda b: b.embedder(t for t in ["a"]), r"got generator\.$"),
    "None question": (lambda b: b.qa(["q", None], ["c", "c"]), r"^Question #1 is NoneType"),
    "float context": (lambda b: b.qa(["q"], [1.5]), r"^Context #0 is float"),
    "empty question": (lambda b: b.qa("", CONTEXT), r"^Question 0 is empty; pass a non-empty question\.$"),
    "blank question": (lambda b: b.qa(["ok?", " \t"], [CONTEXT] * 2), r"^Question 1 is empty"),
    "empty context": (lambda b: b.qa("where?", ""), r"^Context 0 is empty; pass the text to search"),
    "question over the window": (
        lambda b: b.qa("what is it " * 30, CONTEXT),
        r"^Question #0 is longer than the model window \(64 tokens\), leaving no room for the context; "
        r"shorten the question\.$",
    ),
    "question leaving no room for the stride": (
        lambda b: b.qa("what is the capital of france " * 8, CONTEXT * 4),
        r"^Question 0 has \d+ tokens, leaving \d+ context tokens per window, not more than doc_stride 16",
    ),
    "top_k 0": (lambda b: b.qa("where?", CONTEXT, top_k=0), r"^top_k must be a positive integer, got 0\.$"),
    "top_k negative": (lambda b: b.classifier("x", top_k=-3), r"^top_k must be a positive integer, got -3\.$"),
    "top_k absurd": (
        lambda b: b.qa("where?", CONTEXT, top_k=10**9),
        r"^top_k 1,000,000,000 is more than max_top_k \(100\); ask for fewer or raise "
        r"RuntimeOptions\(max_top_k=\.\.\.\)\.$",
    ),
    "top_k not an int": (lambda b: b.classifier("x", top_k=1.5), r"^top_k must be a positive integer, got 1\.5\.$"),
    "megabyte context": (
        lambda b: b.qa("where?", MEGABYTE),
        r"^Context #0 has 1,000,000 characters, more than max_context_chars \(100,000\); shorten it or raise "
        r"RuntimeOptions\(max_context_chars=\.\.\.\)\.$",
    ),
    "over 2M characters": (
        lambda b: b.embedder(["ok", "ab" * 1_000_001]),
        r"^Text #1 has 2,000,002 characters, more than max_chars_per_text \(2,000,000\)",
    ),
}


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_a_bad_call_is_one_clear_input_error(case: str, bundle: bertrt.Bundle) -> None:
    call, message = BAD_CALLS[case]
    with pytest.raises(InputError, match=message):
        call(bundle)


def test_limits_are_configurable_and_fail_before_tokenizing(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = RuntimeOptions(max_texts_per_call=3, max_chars_per_text=10, max_context_chars=40, max_top_k=5)
    bundle = bertrt.load(tiny_bundle, device="cpu", options=options)
    spies = [spy_on(runner, monkeypatch) for runner in (bundle.embedder, bundle.classifier, bundle.qa)]
    cases = [
        (lambda: bundle.classifier(["a"] * 4), r"^Got 4 texts in one call, more than max_texts_per_call \(3\); "),
        (lambda: bundle.embedder(["a", "x" * 11]), r"^Text #1 has 11 characters, more than max_chars_per_text \(10\)"),
        (lambda: bundle.qa(["q?"] * 4, ["c"] * 4), r"^Got 4 questions in one call"),
        (lambda: bundle.qa("where?", "x" * 41), r"^Context #0 has 41 characters, more than max_context_chars \(40\)"),
        (lambda: bundle.qa("where is it?", "paris"), r"^Question #0 has 12 characters, more than max_chars_per_text"),
        (lambda: bundle.classifier("a", top_k=6), r"^top_k 6 is more than max_top_k \(5\)"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message):
            call()
    assert [spy.calls for spy in spies] == [0, 0, 0]
    # Within the limits everything runs; top_k up to the limit is capped by what exists.
    assert len(bundle.classifier(["a", "b", "x" * 10], top_k=5)[0].top) == 2
    assert len(bundle.qa("where?", "paris " * 6, top_k=5)[0].answers) == 5


def test_limits_must_be_positive() -> None:
    with pytest.raises(bertrt.ConfigError, match="max_context_chars must be 1 or more, got 0"):
        RuntimeOptions(max_context_chars=0)


# --- QA over long contexts and without answers --------------------------------------------


def test_qa_reads_a_long_context_whole(bundle: bertrt.Bundle) -> None:
    context = "the film was good and the actors were great . " * 400 + "paris is the capital of france ."
    assert len(context) < bundle.options.max_context_chars
    result = bundle.qa.answer("what is the capital?", context, top_k=3, max_answer_length=10**6)
    # ~4,000 context tokens, ~40 new ones per 64-token window (stride 16): about 100 windows.
    assert result.windows >= 90
    assert all(a.text == context[a.start : a.end] for a in result.answers)


def test_a_context_without_a_readable_token(bundle: bertrt.Bundle) -> None:
    assert bundle.qa.answer("where?", "\x00\x01\x02").answers == ()
    [no_answer] = bundle.qa.answer("where?", "\x00\x01\x02", null_threshold=0.0).answers
    assert (no_answer.text, no_answer.start, no_answer.end) == ("", 0, 0) and 0 < no_answer.score <= 1


def test_top_k_beyond_the_spans_of_a_short_context_returns_them_all(bundle: bertrt.Bundle) -> None:
    answers = bundle.qa.answer("where?", "paris france", top_k=100).answers
    assert {(a.start, a.end) for a in answers} == {(0, 5), (6, 12), (0, 12)}
    assert [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)


def test_a_long_call_runs_in_chunks_with_the_results_of_single_calls(tiny_bundle: Path) -> None:
    # batch_size 1: four pairs per chunk, and every window runs alone, so results are exact.
    bundle = bertrt.load(tiny_bundle, device="cpu", options=RuntimeOptions(batch_size=1))
    contexts = [f"{CONTEXT} " * (1 + i % 4) + f"the year was {i} ." for i in range(11)]
    questions = [f"what is {w}?" for w in ("paris", "the year", "it")] * 4
    questions = questions[: len(contexts)]
    together = bundle.qa(questions, contexts, top_k=2)
    alone = [bundle.qa.answer(q, c, top_k=2) for q, c in zip(questions, contexts, strict=True)]
    assert together == alone
    # Errors found while encoding a later chunk still name the pair by its place in the call.
    long_question = "what is the capital of france " * 8
    with pytest.raises(InputError, match="^Question 9 has"):
        bundle.qa([*questions[:9], long_question], [*contexts[:9], CONTEXT * 4])


# --- the command line ---------------------------------------------------------------------


def invoke(*args: str, stdin: str | bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


@pytest.fixture(scope="module")
def broken(fp32_only_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the bundle, each broken one way."""
    root = tmp_path_factory.mktemp("broken")

    def copy(name: str) -> Path:
        return Path(shutil.copytree(fp32_only_bundle, root / name))

    bundles = {"empty": root / "empty"}
    bundles["empty"].mkdir()
    bundles["wrong task"] = copy("wrong-task")
    manifest = json.loads((bundles["wrong task"] / "manifest.json").read_text())
    del manifest["models"]["classifier"]
    (bundles["wrong task"] / "manifest.json").write_text(json.dumps(manifest))
    bundles["truncated onnx"] = copy("truncated")
    onnx = bundles["truncated onnx"] / "classifier" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    bundles["edited onnx"] = copy("edited")
    onnx = bundles["edited onnx"] / "classifier" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    onnx.write_bytes(bytes(data))
    bundles["missing tokenizer"] = copy("no-tokenizer")
    (bundles["missing tokenizer"] / "classifier" / "tokenizer.json").unlink()
    bundles["unlisted tokenizer"] = copy("unlisted")
    manifest_path = bundles["unlisted tokenizer"] / "classifier" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]["tokenizer.json"]
    manifest_path.write_text(json.dumps(manifest))
    return bundles


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", r"broken\d*/empty/manifest.json does not exist, so .* is not a bertrt bundle; run `bertrt export`"),
        ("model folder", r"holds a single embed model, not a bundle; pass the bundle folder that contains it"),
        ("wrong task", r"has no classify model \(it serves: embed, qa\); re-export it"),
        ("truncated onnx", r"classifier/model.onnx does not match its sha256 in the manifest"),
        ("edited onnx", r"classifier/model.onnx does not match its sha256 in the manifest"),
        ("missing tokenizer", r"classifier/tokenizer.json is listed in the manifest but missing"),
        ("unlisted tokenizer", r"classifier/tokenizer.json has no sha256 in the manifest, so it cannot be verified"),
    ],
)
def test_cli_refuses_broken_bundles_in_one_line(
    case: str, message: str, broken: dict[str, Path], fp32_only_bundle: Path
) -> None:
    models = fp32_only_bundle / "embedder" if case == "model folder" else broken[case]
    err = one_error_line(*invoke("classify", "i love paris", "--models", str(models), "--device", "cpu"))
    assert re.search(message, err), err


def test_an_edited_file_is_refused_before_any_session_exists(
    broken: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertrt import runner

    sessions: list[Any] = []
    monkeypatch.setattr(runner, "OrtSession", lambda *args, **kwargs: sessions.append(args))
    with pytest.raises(BundleError, match="does not match its sha256"):
        bertrt.Classifier(broken["edited onnx"] / "classifier", device="cpu")
    assert sessions == []


@pytest.mark.parametrize(
    ("option", "value", "valid"),
    [("--precision", "fp64", ["'fp32'", "'fp16'", "'int8'"]), ("--device", "tpu", ["'auto'", "'cpu'", "'cuda'"])],
)
def test_unknown_option_values_list_the_valid_ones(
    option: str, value: str, valid: list[str], fp32_only_bundle: Path
) -> None:
    code, out, err = invoke("classify", "x", "--models", str(fp32_only_bundle), option, value)
    flat = re.sub(r"[\s│╭╮╰╯─]+", " ", err)  # undo the error box's line wrapping
    assert code == 2 and out == ""
    assert f"Invalid value for '{option}'" in flat and f"'{value}' is not one of" in flat
    assert all(choice in flat for choice in valid)


def test_device_auto_falls_back_to_the_cpu_and_says_why(fp32_only_bundle: Path) -> None:
    if bertrt.Embedder(fp32_only_bundle / "embedder").provider != "CPUExecutionProvider":
        pytest.skip("CUDA works on this machine")
    code, out, err = invoke("classify", "x", "--models", str(fp32_only_bundle), "--device", "auto", "-v", "--json")
    assert code == 0 and json.loads(out)[0]["text"] == "x"
    assert "--device auto fell back to the CPU because" in err


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["qa", "-"], b'{"question": "q", "context": "\xff"}\n', "stdin is not valid UTF-8 (byte 0xff at offset 30)"),
        (["classify", "-"], b"ok\n\xc3\x28\n", "stdin is not valid UTF-8 (byte 0xc3 at offset 3)"),
        (["classify", "x", "--top-k", "1000"], None, "top_k 1,000 is more than max_top_k (100)"),
        (["qa", "-q", "where?", "-c", ""], None, "Context 0 is empty"),
        (["qa", "-"], json.dumps({"question": "where?", "context": MEGABYTE}), "more than --max-context-chars"),
    ],
)
def test_cli_bad_input_is_one_line(
    args: list[str], stdin: str | bytes | None, message: str, fp32_only_bundle: Path
) -> None:
    err = one_error_line(*invoke(*args, "--models", str(fp32_only_bundle), "--device", "cpu", stdin=stdin))
    assert message in err


def test_cli_serves_odd_texts(fp32_only_bundle: Path) -> None:
    texts = ["", *SCRIPTS.values()]
    code, out, err = invoke("embed", *texts, "--models", str(fp32_only_bundle), "--device", "cpu", "--json")
    assert code == 0, err
    assert [item["text"] for item in json.loads(out)] == texts  # UTF-8 out, nothing escaped away
    code, out, _ = invoke("classify", "--models", str(fp32_only_bundle), "--device", "cpu", "-", stdin=MEGABYTE)
    assert code == 0 and "cut at the model's maximum length" in out


def test_an_answer_is_a_plain_value() -> None:
    # QA results compare by value: the chunked-call test above relies on it.
    assert Answer("a", 0, 1, 0.5) == Answer("a", 0, 1, 0.5)


# --- the HTTP server ----------------------------------------------------------------------
# Whatever a client sends, the server answers below 500 (a JSON error for every 4xx it
# makes) and keeps serving the same results; with API keys on, callers without a valid
# key get 401 whatever else is wrong with their request.

SERVER_KEY = "hardening-key_1"
JSON = {"Content-Type": "application/json"}


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


# name: (method, path, body, extra headers)
HOSTILE_REQUESTS: dict[str, tuple[str, str, bytes, dict[str, str]]] = {
    **{f"blank {i}": ("POST", "/classify", body({"texts": [t, t]}), JSON) for i, t in enumerate(BLANK)},
    "scripts embed": ("POST", "/embed", body({"texts": list(SCRIPTS.values()), "token_embeddings": True}), JSON),
    "scripts openai": ("POST", "/v1/embeddings", body({"input": list(SCRIPTS.values())}), JSON),
    "scripts qa": ("POST", "/qa", body({"question": list(SCRIPTS.values()), "context": list(SCRIPTS.values())}), JSON),
    "megabyte text": ("POST", "/classify", body({"texts": MEGABYTE}), JSON),
    "megabyte context": ("POST", "/qa", body({"question": "where?", "context": MEGABYTE}), JSON),
    "over 2M characters": ("POST", "/embed", body({"texts": "ab" * 1_000_001}), JSON),
    "too many texts": ("POST", "/classify", body({"texts": [""] * 10_001}), JSON),
    "body over the limit": ("POST", "/embed", b'{"texts": "' + b"a" * 9_000_000 + b'"}', JSON),
    "lone surrogate": ("POST", "/classify", b'{"texts": "\\ud800"}', JSON),
    "lone surrogate in a list": ("POST", "/embed", b'{"texts": ["ok", "a\\udfffb"]}', JSON),
    "lone surrogate question": ("POST", "/qa", b'{"question": "\\ud800?", "context": "paris"}', JSON),
    "lone surrogate openai": ("POST", "/v1/embeddings", b'{"input": ["\\udbff"]}', JSON),
    "not UTF-8": ("POST", "/classify", b'{"texts": "\xff\xfe"}', JSON),
    "truncated JSON": ("POST", "/classify", b'{"texts": ', JSON),
    "empty body": ("POST", "/classify", b"", JSON),
    "null body": ("POST", "/embed", b"null", JSON),
    "a list body": ("POST", "/qa", b"[1, 2]", JSON),
    "deep nesting": ("POST", "/classify", b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON),
    "a 5,000-digit top_k": ("POST", "/classify", b'{"texts": "x", "top_k": 1' + b"0" * 5_000 + b"}", JSON),
    "NaN threshold": ("POST", "/qa", b'{"question": "q", "context": "c", "null_threshold": NaN}', JSON),
    "infinite threshold": ("POST", "/qa", b'{"question": "q", "context": "c", "null_threshold": 1e400}', JSON),
    "None in a list": ("POST", "/classify", body({"texts": ["ok", None]}), JSON),
    "int in a list": ("POST", "/embed", body({"texts": ["ok", 3]}), JSON),
    "texts an object": ("POST", "/classify", body({"texts": {"a": 1}}), JSON),
    "top_k 0": ("POST", "/qa", body({"question": "q", "context": CONTEXT, "top_k": 0}), JSON),
    "top_k absurd": ("POST", "/classify", body({"texts": "x", "top_k": 10**30}), JSON),
    "top_k a float": ("POST", "/classify", body({"texts": "x", "top_k": 1.5}), JSON),
    "huge answer length": ("POST", "/qa", body({"question": "q", "context": "c", "max_answer_length": 10**12}), JSON),
    "empty question": ("POST", "/qa", body({"question": "", "context": CONTEXT}), JSON),
    "question over the window": ("POST", "/qa", body({"question": "what is it " * 30, "context": CONTEXT}), JSON),
    "unequal QA lists": ("POST", "/qa", body({"question": ["a", "b"], "context": ["c"]}), JSON),
    "empty lists": ("POST", "/qa", body({"question": [], "context": []}), JSON),
    "unknown field": ("POST", "/embed", body({"texts": "x", "pool": "max"}), JSON),
    "token ids": ("POST", "/v1/embeddings", body({"input": [[1, 2], [3]]}), JSON),
    "mixed input": ("POST", "/v1/embeddings", body({"input": ["a", 1]}), JSON),
    "wrong dimensions": ("POST", "/v1/embeddings", body({"input": "x", "dimensions": -1}), JSON),
    "text/plain": ("POST", "/classify", b"i love paris", {"Content-Type": "text/plain"}),
    "a form": ("POST", "/classify", b"texts=a", {"Content-Type": "application/x-www-form-urlencoded"}),
    "GET on a task": ("GET", "/classify", b"", {}),
    "DELETE": ("DELETE", "/qa", b"", {}),
    "OPTIONS": ("OPTIONS", "/embed", b"", {}),
    "unknown path": ("POST", "/v2/embeddings", body({"input": "x"}), JSON),
    "odd path": ("GET", "/%00/..%2f..%2fetc/passwd", b"", {}),
    "long path": ("GET", "/" + "a" * 8_000, b"", {}),
    "a query string": ("POST", "/classify?texts=%ff&top_k=-1", body({"texts": "x"}), JSON),
}
# Authorization headers that carry no valid key: each is a 401.
HOSTILE_AUTHORIZATION: dict[str, list[tuple[bytes, bytes]]] = {
    "none": [],
    "no token": [(b"authorization", b"Bearer")],
    "a space for a token": [(b"authorization", b"Bearer  \tx")],
    "another scheme": [(b"authorization", b"Basic " + base64.b64encode(SERVER_KEY.encode()))],
    "a prefix of the key": [(b"authorization", b"Bearer " + SERVER_KEY[:-1].encode())],
    "the key and more": [(b"authorization", b"Bearer " + SERVER_KEY.encode() + b"x")],
    "not ASCII": [(b"authorization", b"Bearer " + SERVER_KEY.encode() + b"\xff\xfe")],
    "8 kB": [(b"authorization", b"Bearer " + b"a" * 8_000)],
    "twice": [(b"authorization", f"Bearer {SERVER_KEY}".encode())] * 2,
    "the key without a scheme": [(b"authorization", SERVER_KEY.encode())],
    "as another header": [(b"x-api-key", SERVER_KEY.encode())],
}


@pytest.fixture(scope="module", params=["without keys", "with keys"])
def http_server(request: pytest.FixtureRequest, tiny_bundle: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A server on the tiny bundle, without or with an API key; its URL and the headers that
    authorize a request."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from serving import ServerThread

    from bertrt.serve import ServeConfig

    keys = (SERVER_KEY,) if request.param == "with keys" else ()
    config = ServeConfig(models=tiny_bundle, device=bertrt.Device.CPU, api_keys=keys)
    with ServerThread(config) as server:
        yield server.url, {"Authorization": f"Bearer {SERVER_KEY}"} if keys else {}


REFERENCE_REQUESTS = {
    "/embed": {"texts": ["i love paris", ""], "normalize": True},
    "/classify": {"texts": ["i love paris", "a"], "top_k": 2},
    "/qa": {"question": "what is paris?", "context": CONTEXT, "top_k": 2},
    "/v1/embeddings": {"input": ["i love paris"]},
}


def test_the_server_answers_hostile_requests_below_500_and_keeps_serving(
    http_server: tuple[str, dict[str, str]],
) -> None:
    import httpx

    url, authorized = http_server

    def reference(http: httpx.Client) -> dict[str, Any]:
        responses = {path: http.post(path, json=data, headers=authorized) for path, data in REFERENCE_REQUESTS.items()}
        assert {path: r.status_code for path, r in responses.items()} == dict.fromkeys(REFERENCE_REQUESTS, 200)
        return {path: r.json() for path, r in responses.items()}

    def send(name: str) -> tuple[str, int, Any]:
        method, path, content, headers = HOSTILE_REQUESTS[name]
        try:
            response = http.request(method, path, content=content, headers={**headers, **authorized})
        except httpx.TransportError as exc:  # a dropped connection is a failure too
            return name, 599, repr(exc)
        return name, response.status_code, _json_or_text(response)

    with httpx.Client(base_url=url, timeout=120) as http:
        before = reference(http)
        # Concurrently, so that bad requests share batches with each other and with good ones.
        with ThreadPoolExecutor(8) as pool:
            pending = [pool.submit(send, name) for name in HOSTILE_REQUESTS]
            during = [pool.submit(reference, http) for _ in range(4)]
            answers = [future.result() for future in pending]
            assert all(future.result() == before for future in during)
        failures = [(name, status, data) for name, status, data in answers if status >= 500]
        assert failures == []
        unshaped = [(name, data) for name, status, data in answers if status >= 400 and not _is_error_body(data)]
        assert unshaped == []
        assert http.get("/health").json()["status"] == "ready"
        assert reference(http) == before


@pytest.mark.parametrize("http_server", ["with keys"], indirect=True)
def test_with_keys_every_request_without_a_valid_key_is_401(http_server: tuple[str, dict[str, str]]) -> None:
    import httpx

    url, authorized = http_server
    with httpx.Client(base_url=url, timeout=120) as http:
        statuses = {}
        for name, headers in HOSTILE_AUTHORIZATION.items():
            for request in ("GET on a task", "scripts qa", "body over the limit", "unknown path", "not UTF-8"):
                method, path, content, extra = HOSTILE_REQUESTS[request]
                response = http.request(method, path, content=content, headers=[*extra.items(), *headers])
                statuses[name, request] = response.status_code
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert response.json()["error"]["type"] == "unauthorized"
        assert set(statuses.values()) == {401}, statuses
        assert http.get("/health").json()["status"] == "ready"
        assert http.post("/classify", json={"texts": "x"}, headers=authorized).status_code == 200


def _json_or_text(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _is_error_body(data: Any) -> bool:
    return isinstance(data, dict) and set(data) == {"error"} and {"type", "message"} <= set(data["error"])
