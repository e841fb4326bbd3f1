"""Export-stage commands: export (validate and eval join it). They need the export extra."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from bertrt.cli import app
from bertrt.cli.common import DEFAULT_MODELS, JsonOption, ModelsOption, command_errors
from bertrt.errors import ConfigError
from bertrt.types import Precision

EXPORT_EXTRA_HINT = "install the export stage with: pip install 'bertrt[export]'"


def require_export_stage() -> None:
    """Fail with one sentence when torch/transformers/optimum are not installed."""
    try:
        import optimum.exporters.onnx  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"This command needs the export stack ({exc.name} is missing); {EXPORT_EXTRA_HINT}.") from exc


@app.command()
def export(
    recipe: Annotated[
        str, typer.Option(help="Recipe name from models/ (minilm, bert-base) or a path to a .toml recipe.")
    ] = "minilm",
    out: Annotated[
        Path | None, typer.Option(help="Bundle folder to write (replaced atomically). Default: models/<recipe name>.")
    ] = None,
    qa_data: Annotated[
        str | None,
        typer.Option(
            metavar="SQUAD",
            help="SQuAD data to fine-tune the QA head on: a SQuAD-format JSON file, a folder written by datasets' "
            "save_to_disk, or a datasets hub id, with the split after a colon where it holds several "
            "(rajpurkar/squad:train, DIR:train). Without it the head is exported untrained."
        ),
    ] = None,
    qa_eval_data: Annotated[
        str | None,
        typer.Option(
            metavar="SQUAD",
            help="SQuAD data to score the trained QA head on (EM/F1, kept in the manifest), in any --qa-data form "
            "(rajpurkar/squad:validation)."
        ),
    ] = None,
    precision: Annotated[
        list[Precision] | None,
        typer.Option(help="Variant to build; repeat for several. Default: fp32, fp16 and int8."),
    ] = None,
    train_size: Annotated[int | None, typer.Option(help="IMDB reviews to fine-tune the classifier on (balanced).")] = None,
    heldout_size: Annotated[int | None, typer.Option(help="Held-out IMDB reviews to measure accuracy on.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Classifier training epochs.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Classifier learning rate.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Classifier training truncation length (tokens).")] = None,
    qa_epochs: Annotated[float | None, typer.Option(help="QA training epochs.")] = None,
    qa_max_examples: Annotated[int | None, typer.Option(help="Use at most this many questions of --qa-data.")] = None,
    qa_eval_size: Annotated[int | None, typer.Option(help="Score on at most this many questions of --qa-eval-data.")] = None,
) -> None:
    """Fine-tune, convert, optimize and validate the three models of a recipe into a bundle.

    The bundle appears at --out only when every file passed validation against PyTorch;
    a failed or interrupted export leaves the previous bundle untouched.
    """
    overrides = {
        "classifier": {
            "train_size": train_size,
            "heldout_size": heldout_size,
            "epochs": epochs,
            "learning_rate": learning_rate,
            "max_length": max_length,
        },
        "qa": {"epochs": qa_epochs, "max_examples": qa_max_examples, "eval_size": qa_eval_size},
    }
    with command_errors(capture_warnings=False):
        require_export_stage()
        from bertrt.export.pipeline import ExportOptions, export_bundle
        from bertrt.export.recipe import load_recipe
        from bertrt.export.squad import check_squad_source

        for source in (qa_data, qa_eval_data):
            if source is not None:
                check_squad_source(source)
        loaded = load_recipe(recipe).with_overrides(**overrides)
        options = ExportOptions(
            out=out or Path("models") / loaded.name,
            precisions=tuple(dict.fromkeys(precision)) if precision else ExportOptions.precisions,
            qa_data=qa_data,
            qa_eval_data=qa_eval_data,
        )
        summary = export_bundle(loaded, options, log=lambda line: typer.echo(line, err=True))
    typer.echo(_summary_text(summary))


def _summary_text(summary: Any) -> str:
    lines = [f"Bundle written to {summary.out} in {summary.seconds / 60:.1f} min."]
    for result in summary.models:
        manifest = result.manifest
        for precision, variant in manifest.variants.items():
            report = variant.validation
            if not report.get("ran"):
                status = "not validated here"
            else:
                worst = max(report.get("max_abs_diff", {"-": 0.0}).values())
                status = f"validated, max abs diff {worst:.1e}"
            lines.append(f"  {result.name:<10} {precision.value:<5} {variant.file:<16} {status}")
        training = manifest.training or {}
        if "imdb_heldout_accuracy" in training:
            lines.append(
                f"  classifier held-out IMDB accuracy {training['imdb_heldout_accuracy']:.1%}, "
                f"Rotten Tomatoes {training['rotten_tomatoes_accuracy']:.1%}"
            )
        if "eval" in training:
            lines.append(f"  qa {training['eval']['data']}: EM {training['eval']['exact_match']:.1f}, F1 {training['eval']['f1']:.1f}")
        if not manifest.trained:
            lines.append("  qa span head is untrained (pass --qa-data to train it); its answers mean nothing yet")
    return "\n".join(lines)


@app.command()
def validate(
    models: ModelsOption = DEFAULT_MODELS,
    precision: Annotated[
        list[Precision] | None, typer.Option(help="Only check this variant; repeat for several. Default: all.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Re-check every file of a bundle against the PyTorch model it came from.

    Prints, per model and variant, the max abs difference per output and the label or answer
    agreement. Exits with 1 when any file is over its tolerance.
    """
    with command_errors(capture_warnings=False):
        require_export_stage()
        from bertrt.export.revalidate import validate_bundle

        checks = validate_bundle(models, tuple(precision) if precision else None)
    failed = [c for c in checks if c.report.get("passed") is False]
    if json_output:
        typer.echo(json.dumps({"bundle": str(models), "passed": not failed, "checks": [c.to_dict() for c in checks]}, indent=2))
    else:
        typer.echo(f"{'model':<11}{'variant':<8}{'size':>9}  {'max abs diff':<14}{'agreement':<11}result")
        for check in checks:
            typer.echo(_check_row(check))
    if failed:
        raise typer.Exit(code=1)


def _check_row(check: Any) -> str:
    report = check.report
    size = f"{check.size_bytes / 1e6:.1f} MB"
    if not report.get("ran"):
        return f"{check.model:<11}{check.precision.value:<8}{size:>9}  {'-':<14}{'-':<11}not run: {report['reason']}"
    worst = max(report["max_abs_diff"].values())
    agreement_text = _agreement_text(report)
    result = "ok" if report["passed"] else "FAILED: " + "; ".join(report["failures"])
    return f"{check.model:<11}{check.precision.value:<8}{size:>9}  {worst:<14.2e}{agreement_text:<11}{result}"


def _agreement_text(report: dict[str, Any]) -> str:
    if "label_agreement" in report:
        return f"labels {report['label_agreement']:.0%}"
    if "answer_agreement" in report:
        return f"spans {report['answer_agreement']:.0%}"
    if "min_cosine_pooler" in report:
        return f"cos {report['min_cosine_pooler']:.4f}"
    return "-"


class EvalTask(str, Enum):
    """Which model `bertrt eval` scores."""

    CLASSIFY = "classify"
    QA = "qa"


@app.command(name="eval")
def evaluate(
    task: Annotated[EvalTask, typer.Option(help="classify: held-out IMDB + Rotten Tomatoes; qa: SQuAD EM/F1 on --data.")],
    data: Annotated[Path | None, typer.Option(help="SQuAD-format JSON to score QA on (required for --task qa).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Score only the first N examples of each data set.")] = None,
    models: ModelsOption = DEFAULT_MODELS,
    json_output: JsonOption = False,
) -> None:
    """Task accuracy of PyTorch and every bertrt variant, side by side on the same examples.

    Also reports, per variant, how often its label or answer text equals PyTorch's.
    """
    with command_errors(capture_warnings=False):
        require_export_stage()
        from bertrt.export.evaluate import eval_classify, eval_qa

        if task is EvalTask.QA:
            if data is None or not data.is_file():
                raise ConfigError("--task qa needs --data pointing at a SQuAD-format JSON file.")
            report = eval_qa(models, data, limit, progress=not json_output)
        else:
            report = eval_classify(models, limit, progress=not json_output)
    if json_output:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(_eval_table(report))


def _eval_table(report: dict[str, Any]) -> str:
    if report["task"] == "qa":
        lines = [f"SQuAD {report['data']} ({report['count']} questions)", f"{'system':<14}{'EM':>7}{'F1':>7}{'same answer':>13}"]
        for name, scores in report["systems"].items():
            same = f"{scores['answer_agreement']:.1%}" if "answer_agreement" in scores else "-"
            lines.append(f"{name:<14}{scores['exact_match']:>7.1f}{scores['f1']:>7.1f}{same:>13}")
        return "\n".join(lines)
    lines = []
    for dataset, result in report["datasets"].items():
        lines += [f"{dataset} ({result['count']} texts)", f"{'system':<14}{'accuracy':>10}{'same label':>12}"]
        for name, scores in result["systems"].items():
            same = f"{scores['label_agreement']:.1%}" if "label_agreement" in scores else "-"
            lines.append(f"{name:<14}{scores['accuracy']:>10.2%}{same:>12}")
    return "\n".join(lines)
