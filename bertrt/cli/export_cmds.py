"""Export-stage commands: export, validate and eval. They need the export extra.

Each builds one config object from its options (ExportRequest, ValidateConfig, EvalConfig)
and hands it to one export-stage function, imported only when the command runs.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from bertrt.cli import app
from bertrt.cli.common import DEFAULT_MODELS, JsonOption, ModelsOption, command_errors
from bertrt.cli.render import eval_text, export_summary_text, validation_table
from bertrt.errors import ConfigError
from bertrt.types import Device, Precision, Task

EXPORT_EXTRA_HINT = "install the export stage with: pip install 'bertrt[export]'"
ValidationDeviceOption = Annotated[
    Device,
    typer.Option(
        "--device",
        help="Where each variant is run: auto runs fp32 and fp16 on CUDA when a GPU is present, else fp32 on the "
        "CPU and fp16 not at all; int8 always on the CPU; cpu skips fp16; cuda fails without a GPU.",
    ),
]


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
    train_size: Annotated[
        int | None, typer.Option(help="IMDB reviews to fine-tune the classifier on (balanced).")
    ] = None,
    heldout_size: Annotated[int | None, typer.Option(help="Held-out IMDB reviews to measure accuracy on.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Classifier training epochs.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Classifier learning rate.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Classifier training truncation length (tokens).")] = None,
    qa_epochs: Annotated[float | None, typer.Option(help="QA training epochs.")] = None,
    qa_max_examples: Annotated[int | None, typer.Option(help="Use at most this many questions of --qa-data.")] = None,
    qa_eval_size: Annotated[
        int | None, typer.Option(help="Score on at most this many questions of --qa-eval-data.")
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Write no bundle unless every variant passes. Default: an fp16 or int8 file that fails its check "
            "is left out (with a warning; its report stays in the manifest) and the rest is written.",
        ),
    ] = False,
) -> None:
    """Fine-tune, convert, optimize and validate the three models of a recipe into a bundle.

    The bundle appears at --out only when every fp32 file passed validation against PyTorch;
    an fp16 or int8 file that fails is left out and named (--strict: nothing is written). A
    failed or interrupted export leaves the previous bundle untouched.
    """
    with command_errors(capture_warnings=False):
        require_export_stage()
        from bertrt.export.request import ExportRequest, run_export

        request = ExportRequest(
            recipe=recipe,
            out=out,
            precisions=tuple(precision) if precision else ExportRequest.precisions,
            qa_data=qa_data,
            qa_eval_data=qa_eval_data,
            classifier_training={
                "train_size": train_size,
                "heldout_size": heldout_size,
                "epochs": epochs,
                "learning_rate": learning_rate,
                "max_length": max_length,
            },
            qa_training={"epochs": qa_epochs, "max_examples": qa_max_examples, "eval_size": qa_eval_size},
            strict=strict,
        )
        summary = run_export(request, log=lambda line: typer.echo(line, err=True))
    typer.echo(export_summary_text(summary))


@app.command()
def validate(
    models: ModelsOption = DEFAULT_MODELS,
    precision: Annotated[
        list[Precision] | None, typer.Option(help="Only check this variant; repeat for several. Default: all.")
    ] = None,
    device: ValidationDeviceOption = Device.AUTO,
    json_output: JsonOption = False,
) -> None:
    """Re-check every file of a bundle against the PyTorch model it came from.

    Prints, per model and variant, the max abs difference per output and the label or answer
    agreement, then the variants the export left out after they failed. Exits with 1 when any
    file of the bundle is over its tolerance.
    """
    with command_errors(capture_warnings=False):
        require_export_stage()
        from bertrt.export.revalidate import ValidateConfig, validate_bundle

        checks = validate_bundle(ValidateConfig(models, tuple(precision or ()), device))
    passed = all(check.report.get("passed") is not False for check in checks if not check.left_out)
    if json_output:
        report = {"bundle": str(models), "passed": passed, "checks": [check.to_dict() for check in checks]}
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo(validation_table(checks))
    if not passed:
        raise typer.Exit(code=1)


class EvalTask(str, Enum):
    """Which model `bertrt eval` scores."""

    CLASSIFY = "classify"
    QA = "qa"
    EMBED = "embed"


@app.command(name="eval")
def eval_command(
    task: Annotated[
        EvalTask,
        typer.Option(
            help="classify: held-out IMDB + Rotten Tomatoes; qa: SQuAD EM/F1 on --data; embed: pooler cosine "
            "against PyTorch on held-out IMDB + Rotten Tomatoes."
        ),
    ],
    data: Annotated[
        str | None,
        typer.Option(
            metavar="SQUAD",
            help="SQuAD data to score QA on (required for --task qa), in any --qa-data form of `bertrt export`: "
            "a JSON file, a save_to_disk folder or a hub id, with :SPLIT where it holds several.",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Score only the first N examples of each data set.")] = None,
    models: ModelsOption = DEFAULT_MODELS,
    device: ValidationDeviceOption = Device.AUTO,
    record: Annotated[
        bool,
        typer.Option(
            "--record",
            help="Keep each variant's figures in the model's manifest: --precision auto serves int8 only on "
            "such a record (of at least 200 examples per data set) that meets the task's budget.",
        ),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Task accuracy of PyTorch and every bertrt variant, side by side on the same examples.

    Also reports, per variant, how often its label or answer text equals PyTorch's (for
    embeddings, how close its pooled vectors stay); --record keeps those figures in the bundle.
    """
    with command_errors(capture_warnings=False):
        require_export_stage()
        from bertrt.export.evaluate import EvalConfig, evaluate, record_evaluation

        report = evaluate(EvalConfig(Task(task.value), models, data, limit, progress=not json_output, device=device))
        if record:
            report["recorded_in"] = str(record_evaluation(models, report))
    typer.echo(json.dumps(report, indent=2) if json_output else eval_text(report))
