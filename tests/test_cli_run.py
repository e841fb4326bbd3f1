"""The runtime commands (embed, classify, qa, info) through Typer's CliRunner and one subprocess."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import bertrt
from bertrt.cli import app

CONTEXT = "paris is the capital of france. the immune system is a body system which has cells."
pytestmark = pytest.mark.filterwarnings("ignore:The qa head")


def invoke(*args: str, stdin: str | bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> bertrt.Bundle:
    return bertrt.load(tiny_bundle, device="cpu")


def test_embed_json_equals_the_library(tiny_bundle: Path, bundle: bertrt.Bundle) -> None:
    code, out, err = invoke(
        "embed", "i love paris", "the film", "--models", str(tiny_bundle), "--pooling", "pooler", "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    expected = bundle.embedder(["i love paris", "the film"], pooling="pooler")
    assert [d["text"] for d in data] == ["i love paris", "the film"]
    for item, result in zip(data, expected, strict=True):
        np.testing.assert_allclose(item["vector"], result.vector, rtol=1e-6)
        assert item["tokens"] == list(result.tokens) and item["pooling"] == "pooler"
        assert "token_embeddings" not in item


def test_embed_token_embeddings_and_normalize(tiny_bundle: Path) -> None:
    code, out, _ = invoke(
        "embed", "i love paris", "--models", str(tiny_bundle), "--json", "--token-embeddings", "--normalize"
    )
    [item] = json.loads(out)
    assert code == 0 and len(item["token_embeddings"]) == len(item["tokens"]) == 5
    assert np.linalg.norm(item["vector"]) == pytest.approx(1.0, abs=1e-5)


def test_embed_table_has_a_row_per_text(tiny_bundle: Path) -> None:
    code, out, _ = invoke("embed", "i love paris", "a", "--models", str(tiny_bundle))
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split() == ["#", "tokens", "dim", "norm", "vector", "text"]
    assert lines[1].startswith("0  5 ") and lines[1].endswith("i love paris") and len(lines) == 3


def test_classify_reads_stdin_lines_in_order(tiny_bundle: Path, bundle: bertrt.Bundle) -> None:
    texts = ["i love paris", "the film was bad", "what is this?"]
    code, out, err = invoke(
        "classify",
        "first",
        "-",
        "--models",
        str(tiny_bundle),
        "--json",
        "--top-k",
        "2",
        stdin="\n".join(texts[:2]) + "\n\n" + texts[2] + "\n",
    )
    assert code == 0, err
    data = json.loads(out)
    assert [d["text"] for d in data] == ["first", *texts]
    expected = bundle.classifier(["first", *texts], top_k=2)
    for item, result in zip(data, expected, strict=True):
        assert item["label"] == result.label and item["probabilities"] == pytest.approx(result.probabilities)
        assert [t["label"] for t in item["top"]] == [t.label for t in result.top]


def test_classify_table(tiny_bundle: Path) -> None:
    long_text = "what is the capital of france? " * 12
    code, out, _ = invoke("classify", "i love paris", long_text, "--models", str(tiny_bundle))
    assert code == 0
    assert out.splitlines()[0].split() == ["#", "label", "score", "text"]
    assert "+" in out.splitlines()[2].split()[1]  # the truncated text is flagged
    assert "cut at the model's maximum length" in out


def test_qa_answers_are_slices_of_the_context(tiny_bundle: Path) -> None:
    code, out, err = invoke(
        "qa",
        "--question",
        "what is the capital?",
        "--context",
        CONTEXT,
        "--models",
        str(tiny_bundle),
        "--top-k",
        "3",
        "--json",
    )
    assert code == 0, err
    [item] = json.loads(out)
    assert item["question"] == "what is the capital?" and len(item["answers"]) == 3
    for answer in item["answers"]:
        assert CONTEXT[answer["start"] : answer["end"]] == answer["text"]
    assert "warning: The qa head" in err and "never trained" in err


def test_qa_reads_json_lines_from_stdin(tiny_bundle: Path) -> None:
    lines = [json.dumps({"question": q, "context": CONTEXT}) for q in ("what has cells?", "where?")]
    code, out, err = invoke("qa", "-", "--models", str(tiny_bundle), stdin="\n".join(lines) + "\n")
    assert code == 0, err
    assert out.count("Q: ") == 2 and "Q: what has cells?" in out and "rank  score" in out


def test_info_describes_the_bundle(tiny_bundle: Path) -> None:
    code, out, _ = invoke("info", "--models", str(tiny_bundle), "--verify")
    assert code == 0
    assert "recipe   tiny" in out
    for folder, task in (("embedder", "embed"), ("classifier", "classify"), ("qa", "qa")):
        assert any(line.split()[:2] == [folder, task] for line in out.splitlines())
    qa_row = next(line for line in out.splitlines() if line.startswith("qa "))
    assert qa_row.split()[2] == "NO" and "passed" in qa_row and qa_row.endswith("ok")
    code, out, _ = invoke("info", "--models", str(tiny_bundle), "--json")
    data = json.loads(out)
    assert data["models"]["qa"]["trained"] is False
    assert data["models"]["classifier"]["variants"]["fp32"]["bytes"] > 0


def test_info_shows_the_command_that_made_the_bundle(tiny_bundle: Path) -> None:
    # The test bundle is exported inside this test process, whose command line is sys.argv.
    manifest = json.loads((tiny_bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["command"] == sys.argv
    code, out, _ = invoke("info", "--models", str(tiny_bundle))
    assert code == 0 and f"command  {shlex.join(sys.argv)}" in out.splitlines()


def test_info_flags_an_edited_file(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    (bundle / "qa" / "config.json").write_text("{}", encoding="utf-8")
    code, out, _ = invoke("info", "--models", str(bundle), "--verify", "--json")
    assert code == 0
    data = json.loads(out)["models"]
    assert data["qa"]["checksums_ok"] is False and "config.json" in data["qa"]["checksum_error"]
    assert data["embedder"]["checksums_ok"] is True


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["classify", "x", "--models", "{missing}"], None, "is not a folder; run `bertrt export`"),
        (["embed", "-"], b"\xff\xfe", "stdin is not valid UTF-8 (byte 0xff at offset 0)"),
        (["embed", "-"], "", "No text was given"),
        (["qa", "--question", "where?"], None, "needs both --question and --context"),
        (["qa", "-"], "not json\n", "stdin line 1 is not a JSON object"),
        (["qa", "-", "--question", "q"], "{}", "either --question and --context, or '-' alone"),
        (["classify", "x", "--precision", "int8"], None, r"no int8 variant (it has: fp32)"),
        (["embed", "x", "--device", "cuda"], None, "--device cuda was asked for but"),
    ],
)
def test_errors_are_one_line_on_stderr(
    fp32_only_bundle: Path, tmp_path: Path, args: list[str], stdin: str | bytes | None, message: str
) -> None:
    tiny_bundle = fp32_only_bundle
    if args[-1] == "cuda" and bertrt.Embedder(tiny_bundle / "embedder").provider != "CPUExecutionProvider":
        pytest.skip("CUDA works on this machine")
    models = (
        ["--models", str(tmp_path / "missing")] if "{missing}" in args else ["--models", str(tiny_bundle)]
    )
    args = [a for a in args if a not in ("--models", "{missing}")]
    code, out, err = invoke(*args, *models, stdin=stdin)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_bad_option_values_list_the_valid_ones(tiny_bundle: Path) -> None:
    code, _, err = invoke("embed", "x", "--models", str(tiny_bundle), "--pooling", "max")
    assert code == 2 and "cls" in err and "pooler" in err


def test_every_option_has_help() -> None:
    for command in ("embed", "classify", "qa", "info"):
        code, out, _ = invoke(command, "--help")
        assert code == 0 and "--models" in out and "--json" in out
        assert "--device" in out or command == "info"


LIMIT_OPTIONS = {
    "embed": {"--max-texts-per-call": 10_000, "--max-chars-per-text": 2_000_000},
    "classify": {"--max-texts-per-call": 10_000, "--max-chars-per-text": 2_000_000},
    "qa": {"--max-texts-per-call": 10_000, "--max-chars-per-text": 2_000_000, "--max-context-chars": 100_000},
}


@pytest.mark.parametrize("command", list(LIMIT_OPTIONS))
def test_help_states_each_input_limit_and_its_default(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})  # no option name cut short
    out = result.stdout
    assert result.exit_code == 0
    for option, default in LIMIT_OPTIONS[command].items():
        assert option in out and str(default) in out
        assert getattr(bertrt.RuntimeOptions(), option.lstrip("-").replace("-", "_")) == default
    assert "any length" not in out


def long_context_call(tiny_bundle: Path, *options: str) -> list[str]:
    """A qa call whose context is the 119,030 characters the default limit (100,000) refuses."""
    context = (CONTEXT + " ") * (119_030 // (len(CONTEXT) + 1))
    context += "x" * (119_030 - len(context))
    question = "what is the capital of france?"
    return ["qa", "-q", question, "-c", context, "--models", str(tiny_bundle), "--device", "cpu", "--json", *options]


def test_a_long_context_is_refused_by_default_and_answered_with_a_raised_limit(tiny_bundle: Path) -> None:
    code, out, err = invoke(*long_context_call(tiny_bundle))
    assert code == 2 and out == ""
    assert err == (
        "error: Context #0 has 119,030 characters, more than --max-context-chars (100,000); "
        "shorten it or pass a larger --max-context-chars.\n"
    )
    args = long_context_call(tiny_bundle, "--max-context-chars", "120000")
    code, out, err = invoke(*args)
    assert code == 0, err
    [item] = json.loads(out)
    context = args[args.index("-c") + 1]
    assert item["windows"] > 100 and item["answers"]
    assert all(context[a["start"] : a["end"]] == a["text"] for a in item["answers"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["classify", "a", "b", "c", "--max-texts-per-call", "2"],
            "Got 3 texts in one call, more than --max-texts-per-call (2); "
            "split the request or pass a larger --max-texts-per-call.",
        ),
        (
            ["embed", "abcd", "--max-chars-per-text", "3"],
            "Text #0 has 4 characters, more than --max-chars-per-text (3); "
            "shorten it or pass a larger --max-chars-per-text.",
        ),
        (
            ["qa", "-q", "where?", "-c", "paris", "--max-chars-per-text", "5"],
            "Question #0 has 6 characters, more than --max-chars-per-text (5); ",
        ),
        # No option raises max_top_k: the refusal gives the remedy alone, not RuntimeOptions.
        (["classify", "a", "--top-k", "101"], "top_k 101 is more than max_top_k (100); ask for fewer.\n"),
    ],
)
def test_a_refusal_names_the_option_that_raises_the_limit(tiny_bundle: Path, args: list[str], message: str) -> None:
    models = ["--models", str(tiny_bundle), "--device", "cpu"]
    code, out, err = invoke(*args, *models)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1
    if args[-2].startswith("--max-"):
        code, _, err = invoke(*args[:-1], str(int(args[-1]) + 1), *models)  # one more is enough
        assert code == 0, err


def test_subprocess_smoke_json_only_on_stdout(tiny_bundle: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertrt.cli",
            "classify",
            "i love paris",
            "--models",
            str(tiny_bundle),
            "--json",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    [item] = json.loads(done.stdout)
    assert item["text"] == "i love paris" and item["label"] in ("LABEL_0", "LABEL_1")
    assert "runs on CPUExecutionProvider" in done.stderr or "runs on CUDAExecutionProvider" in done.stderr
