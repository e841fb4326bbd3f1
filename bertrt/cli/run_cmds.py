"""Runtime commands: embed, classify, qa, info.

Each parses its options, builds its RuntimeOptions (the input limits it was given), calls
the library once and prints a compact table, or JSON with ``--json`` (then stdout holds the
JSON document and nothing else). Errors print one line on stderr and exit with status 2;
warnings (an untrained head) print one line on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated

import typer

from bertrt.bundle import Bundle
from bertrt.cli import app
from bertrt.cli.common import (
    DEFAULT_LIMITS,
    DEFAULT_MODELS,
    DeviceOption,
    JsonOption,
    MaxCharsOption,
    MaxContextOption,
    MaxPairsOption,
    MaxQuestionCharsOption,
    MaxTextsOption,
    ModelsOption,
    PrecisionOption,
    VerboseOption,
    command_errors,
)
from bertrt.cli.render import (
    answers_text,
    classifications_text,
    embeddings_text,
    info_text,
    json_text,
)
from bertrt.errors import InputError
from bertrt.info import describe
from bertrt.options import RuntimeOptions
from bertrt.types import Device, Pooling, PrecisionChoice

STDIN = "-"

TextsArgument = Annotated[
    list[str],
    typer.Argument(
        metavar="TEXT",
        help="Texts to process; '-' reads one text per line from stdin (UTF-8; empty lines are skipped).",
        show_default=False,
    ),
]
TopKOption = Annotated[
    int, typer.Option("--top-k", min=1, help="How many results to return per input, best first.")
]


@app.command()
def embed(
    ctx: typer.Context,
    texts: TextsArgument,
    models: ModelsOption = DEFAULT_MODELS,
    pooling: Annotated[
        Pooling,
        typer.Option(
            "--pooling",
            help="Sentence vector: cls (first token), mean (average of real tokens) or pooler "
            "(the model's pooled [CLS] output).",
        ),
    ] = Pooling.MEAN,
    normalize: Annotated[
        bool, typer.Option("--normalize/--no-normalize", help="Scale each sentence vector to unit length.")
    ] = False,
    token_embeddings: Annotated[
        bool,
        typer.Option(
            "--token-embeddings",
            help="With --json, also print every token's vector (last_hidden_state rows).",
        ),
    ] = False,
    device: DeviceOption = Device.AUTO,
    precision: PrecisionOption = PrecisionChoice.FP32,
    max_texts_per_call: MaxTextsOption = DEFAULT_LIMITS.max_texts_per_call,
    max_chars_per_text: MaxCharsOption = DEFAULT_LIMITS.max_chars_per_text,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Embed texts: a sentence vector per text, plus its tokens (and their vectors with --json).

    Example: bertrt embed "I love Paris" --pooling pooler --json
    """
    with command_errors(verbose, context=ctx):
        inputs = _expand_stdin(texts)
        limits = RuntimeOptions(max_texts_per_call=max_texts_per_call, max_chars_per_text=max_chars_per_text)
        embedder = Bundle(models, device=device, precision=precision, options=limits).embedder
        results = embedder(inputs, pooling=pooling, normalize=normalize, token_embeddings=token_embeddings)
        if json_output:
            served = embedder.served()
            typer.echo(
                json_text(
                    [
                        {"text": t, **r.to_dict(token_embeddings), "served": served}
                        for t, r in zip(inputs, results, strict=True)
                    ]
                )
            )
        else:
            typer.echo(embeddings_text(inputs, results))


@app.command()
def classify(
    ctx: typer.Context,
    texts: TextsArgument,
    models: ModelsOption = DEFAULT_MODELS,
    top_k: TopKOption = 1,
    device: DeviceOption = Device.AUTO,
    precision: PrecisionOption = PrecisionChoice.FP32,
    max_texts_per_call: MaxTextsOption = DEFAULT_LIMITS.max_texts_per_call,
    max_chars_per_text: MaxCharsOption = DEFAULT_LIMITS.max_chars_per_text,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Classify texts: label, score and every label's probability.

    Example: bertrt classify "I love Paris" "What a dull film" --top-k 2
    """
    with command_errors(verbose, context=ctx):
        inputs = _expand_stdin(texts)
        limits = RuntimeOptions(max_texts_per_call=max_texts_per_call, max_chars_per_text=max_chars_per_text)
        classifier = Bundle(models, device=device, precision=precision, options=limits).classifier
        results = classifier(inputs, top_k=top_k)
        if json_output:
            served = classifier.served()
            typer.echo(
                json_text([{"text": t, **r.to_dict(), "served": served} for t, r in zip(inputs, results, strict=True)])
            )
        else:
            typer.echo(classifications_text(inputs, results))


@app.command()
def qa(
    ctx: typer.Context,
    source: Annotated[
        str | None,
        typer.Argument(
            metavar="STDIN",
            help='\'-\' reads JSON lines from stdin, each {"question": ..., "context": ...}.',
            show_default=False,
        ),
    ] = None,
    question: Annotated[str | None, typer.Option("--question", "-q", help="The question to answer.")] = None,
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            "-c",
            help="The text to find the answer in; one longer than the model window is read in overlapping "
            "windows, up to --max-context-chars characters.",
        ),
    ] = None,
    models: ModelsOption = DEFAULT_MODELS,
    top_k: TopKOption = 1,
    max_answer_length: Annotated[
        int, typer.Option("--max-answer-length", min=1, help="Longest answer span, in tokens.")
    ] = 30,
    null_threshold: Annotated[
        float | None,
        typer.Option(
            "--null-threshold",
            help="Return an empty answer when the no-answer score beats the best span by more "
            "than this (SQuAD 2.0 style); off by default.",
        ),
    ] = None,
    device: DeviceOption = Device.AUTO,
    precision: PrecisionOption = PrecisionChoice.FP32,
    max_context_chars: MaxContextOption = DEFAULT_LIMITS.max_context_chars,
    max_chars_per_text: MaxQuestionCharsOption = DEFAULT_LIMITS.max_chars_per_text,
    max_texts_per_call: MaxPairsOption = DEFAULT_LIMITS.max_texts_per_call,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Answer questions with exact spans of their context (contexts longer than the model
    window are read in overlapping windows).

    Example: bertrt qa --question "Where is the tower?" --context "The tower is in Paris."
    """
    with command_errors(verbose, context=ctx):
        questions, contexts = _qa_pairs(source, question, context)
        limits = RuntimeOptions(
            max_texts_per_call=max_texts_per_call,
            max_chars_per_text=max_chars_per_text,
            max_context_chars=max_context_chars,
        )
        answerer = Bundle(models, device=device, precision=precision, options=limits).qa
        results = answerer(
            questions,
            contexts,
            top_k=top_k,
            max_answer_length=max_answer_length,
            null_threshold=null_threshold,
        )
        if json_output:
            served = answerer.served()
            typer.echo(
                json_text(
                    [{"question": q, **r.to_dict(), "served": served} for q, r in zip(questions, results, strict=True)]
                )
            )
        else:
            typer.echo(answers_text(questions, results))


@app.command()
def info(
    models: ModelsOption = DEFAULT_MODELS,
    verify: Annotated[
        bool, typer.Option("--verify", help="Also check every file against its sha256 (reads every file).")
    ] = False,
    device: Annotated[
        Device,
        typer.Option(
            "--device", help="The device whose --precision auto choice is shown: auto is this machine's."
        ),
    ] = Device.AUTO,
    json_output: JsonOption = False,
) -> None:
    """Describe a bundle: recipe, models, tasks, variants, sizes, validation, recorded evaluations,
    training, trained flags, and which variant --precision auto serves per model, and why."""
    with command_errors():
        description = describe(models, verify=verify, device=device)
        if json_output:
            typer.echo(json_text(description))
        else:
            typer.echo(info_text(description))


def _expand_stdin(texts: Sequence[str]) -> list[str]:
    """``texts`` with each ``-`` replaced by stdin's lines (empty lines skipped)."""
    expanded: list[str] = []
    for text in texts:
        if text == STDIN:
            expanded.extend(line for line in _stdin_lines() if line)
        else:
            expanded.append(text)
    if not expanded:
        raise InputError("No text was given; pass TEXT arguments or '-' with lines on stdin.")
    return expanded


def _qa_pairs(source: str | None, question: str | None, context: str | None) -> tuple[list[str], list[str]]:
    if source is not None:
        if source != STDIN or question is not None or context is not None:
            raise InputError(
                "Pass either --question and --context, or '-' alone to read JSON lines from stdin."
            )
        pairs = [
            _qa_line(number, line) for number, line in enumerate(_stdin_lines(), start=1) if line.strip()
        ]
        if not pairs:
            raise InputError('stdin held no JSON lines; send one {"question", "context"} object per line.')
        return [q for q, _ in pairs], [c for _, c in pairs]
    if question is None or context is None:
        raise InputError("qa needs both --question and --context (or '-' to read JSON lines from stdin).")
    return [question], [context]


def _qa_line(number: int, line: str) -> tuple[str, str]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("question", "context")):
        raise InputError(
            f"stdin line {number} is not a JSON object with string fields question and context; "
            "send one such object per line."
        )
    return data["question"], data["context"]


def _stdin_lines() -> list[str]:
    raw = typer.get_binary_stream("stdin").read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"stdin is not valid UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start}); send UTF-8 text."
        ) from None
    return text.splitlines()

