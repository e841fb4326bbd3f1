"""Everything the CLI prints: compact tables, one row per result, and JSON documents.

The export-stage types are imported for type checking only: rendering an export summary
must not import torch.

Example::

    >>> print(table(["#", "label"], [["0", "positive"]]))
    #  label
    0  positive
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bertrt.results import Classification, Embedding, QAResult

if TYPE_CHECKING:
    from bertrt.export.pipeline import ExportSummary
    from bertrt.export.revalidate import VariantCheck

TEXT_WIDTH = 48


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in [list(header), *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def clip(text: str, width: int = TEXT_WIDTH) -> str:
    """One line of at most ``width`` characters (newlines and tabs shown as spaces).

    >>> clip("a\\nlong text", 8)
    'a long …'
    """
    flat = " ".join(text.split("\n")).replace("\t", " ").replace("\r", " ")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def embeddings_text(texts: Sequence[str], results: Sequence[Embedding]) -> str:
    """``#  tokens  dim  norm  vector  text`` with the vector's first values."""
    rows = [
        [
            str(i),
            f"{len(r.tokens)}{'+' if r.truncated else ''}",
            str(r.vector.shape[0]),
            f"{float(np.linalg.norm(r.vector)):.4f}",
            _preview(r.vector),
            clip(text),
        ]
        for i, (text, r) in enumerate(zip(texts, results, strict=True))
    ]
    footer = _truncation_note(results)
    return table(["#", "tokens", "dim", "norm", "vector", "text"], rows) + footer


def classifications_text(texts: Sequence[str], results: Sequence[Classification]) -> str:
    """``#  label  score  [top-k]  text``; the top-k column appears when k > 1."""
    show_top = any(len(r.top) > 1 for r in results)
    rows = []
    for i, (text, r) in enumerate(zip(texts, results, strict=True)):
        row = [str(i), r.label + ("+" if r.truncated else ""), f"{r.score:.4f}"]
        if show_top:
            row.append(", ".join(f"{t.label} {t.score:.3f}" for t in r.top))
        rows.append([*row, clip(text)])
    header = ["#", "label", "score", *(["top"] if show_top else []), "text"]
    return table(header, rows) + _truncation_note(results)


def answers_text(questions: Sequence[str], results: Sequence[QAResult]) -> str:
    """One block per question: its answers ranked, with score and character span."""
    blocks = []
    for question, result in zip(questions, results, strict=True):
        rows = [
            [str(rank), f"{a.score:.4f}", f"{a.start}-{a.end}", clip(a.text) if a.text else "(no answer)"]
            for rank, a in enumerate(result.answers, start=1)
        ]
        windows = f"{result.windows} window{'s' if result.windows != 1 else ''}"
        heading = f"Q: {clip(question, 70)}  ({windows})"
        body = table(["rank", "score", "span", "answer"], rows) if rows else "(no answer)"
        blocks.append(f"{heading}\n{body}")
    return "\n\n".join(blocks)


def json_text(data: Any) -> str:
    """``data`` as one JSON document, non-ASCII text kept as it is.

    >>> json_text({"text": "café"})
    '{"text": "café"}'
    """
    return json.dumps(data, ensure_ascii=False)


def info_text(description: Mapping[str, Any]) -> str:
    """The bundle's recipe, versions, and per model its variants, sizes and validation."""
    lines = [
        f"bundle   {description['path']}",
        f"recipe   {description['recipe']}   created {description['created']}",
    ]
    if description.get("command"):
        lines.append(f"command  {shlex.join(description['command'])}")
    lines += [
        "versions " + ", ".join(f"{k} {v}" for k, v in description["versions"].items()),
        "",
    ]
    rows = []
    for folder, model in description["models"].items():
        trained = "yes" if model["trained"] else "NO"
        for precision, variant in model["variants"].items():
            rows.append(
                [
                    folder,
                    model["task"],
                    trained,
                    precision,
                    _megabytes(variant["bytes"]),
                    _validation(variant["validation"]),
                    _checksums(model),
                ]
            )
        for precision, variant in model.get("failed", {}).items():
            reasons = "; ".join(variant["validation"].get("failures", ()))
            rows.append([folder, model["task"], trained, precision, "-", f"FAILED, left out: {reasons}", ""])
    header = ["model", "task", "trained", "variant", "size", "validation", "checksums"]
    if not any("checksums_ok" in m for m in description["models"].values()):
        header, rows = header[:-1], [row[:-1] for row in rows]
    lines.append(table(header, rows))
    for folder, model in description["models"].items():
        details = [f"source {model['source']}", f"max_length {model['max_length']}"]
        if model["doc_stride"] is not None:
            details.append(f"doc_stride {model['doc_stride']}")
        if model["labels"]:
            details.append("labels " + ", ".join(model["labels"]))
        if model["training"]:
            details.append("training " + _metrics(model["training"]))
        lines.append(f"{folder}: " + "; ".join(details))
    lines.append("")
    for folder, model in description["models"].items():
        lines.append(f"--precision auto, {folder}: {model['auto']['precision']} ({model['auto']['reason']})")
    return "\n".join(lines)


def export_summary_text(summary: ExportSummary) -> str:
    """Where the bundle went and, per model and variant, its file and validation result;
    then the training scores, and a note on an untrained QA head."""
    lines = [
        f"Bundle written to {summary.out} in {summary.seconds / 60:.1f} min "
        f"(peak memory {summary.peak_rss_mib / 1024:.1f} GB)."
    ]
    for result in summary.models:
        manifest = result.manifest
        for precision, variant in manifest.variants.items():
            status = _export_validation(variant.validation)
            lines.append(f"  {result.name:<10} {precision.value:<5} {variant.file:<16} {status}")
        for precision, variant in manifest.failed.items():
            reasons = "; ".join(variant.validation.get("failures", ()))
            lines.append(f"  {result.name:<10} {precision.value:<5} {'(left out)':<16} FAILED: {reasons}")
        training = manifest.training or {}
        if "imdb_heldout_accuracy" in training:
            lines.append(
                f"  classifier held-out IMDB accuracy {training['imdb_heldout_accuracy']:.1%}, "
                f"Rotten Tomatoes {training['rotten_tomatoes_accuracy']:.1%}"
            )
        if "eval" in training:
            scores = training["eval"]
            lines.append(f"  qa {scores['data']}: EM {scores['exact_match']:.1f}, F1 {scores['f1']:.1f}")
        if not manifest.trained:
            lines.append("  qa span head is untrained (pass --qa-data to train it); its answers mean nothing yet")
    return "\n".join(lines)


def validation_table(checks: Sequence[VariantCheck]) -> str:
    """``model  variant  size  max abs diff  agreement  result``, one row per checked file."""
    header = f"{'model':<11}{'variant':<8}{'size':>9}  {'max abs diff':<14}{'agreement':<11}result"
    return "\n".join([header, *(_check_row(check) for check in checks)])


def eval_text(report: Mapping[str, Any]) -> str:
    """`bertrt eval`'s report: per system, SQuAD EM/F1, accuracy or pooler cosine per data
    set, and how often it agrees with PyTorch; where the figures were recorded."""
    recorded = [f"recorded in {report['recorded_in']}"] if "recorded_in" in report else []
    if report["task"] == "qa":
        lines = [
            f"SQuAD {report['data']} ({report['count']} questions)",
            f"{'system':<14}{'EM':>7}{'F1':>7}{'same answer':>13}",
        ]
        for name, scores in report["systems"].items():
            same = f"{scores['answer_agreement']:.1%}" if "answer_agreement" in scores else "-"
            lines.append(f"{name:<14}{scores['exact_match']:>7.1f}{scores['f1']:>7.1f}{same:>13}")
        return "\n".join(lines + recorded)
    lines = []
    for dataset, result in report["datasets"].items():
        if report["task"] == "embed":
            lines += [
                f"{dataset} ({result['count']} texts), pooler cosine to PyTorch",
                f"{'system':<14}{'mean':>8}{'1st pct':>9}{'least':>8}",
            ]
            for name, scores in result["systems"].items():
                lines.append(
                    f"{name:<14}{scores['pooler_cosine_mean']:>8.4f}{scores['pooler_cosine_p1']:>9.4f}"
                    f"{scores['pooler_cosine_min']:>8.4f}"
                )
            continue
        lines += [f"{dataset} ({result['count']} texts)", f"{'system':<14}{'accuracy':>10}{'same label':>12}"]
        for name, scores in result["systems"].items():
            same = f"{scores['label_agreement']:.1%}" if "label_agreement" in scores else "-"
            lines.append(f"{name:<14}{scores['accuracy']:>10.2%}{same:>12}")
    return "\n".join(lines + recorded)


def _export_validation(report: Mapping[str, Any]) -> str:
    if not report.get("ran"):
        return "not validated here"
    worst = max(report.get("max_abs_diff", {"-": 0.0}).values())
    return f"validated, max abs diff {worst:.1e}"


def _check_row(check: VariantCheck) -> str:
    report = check.report
    size = f"{check.size_bytes / 1e6:.1f} MB"
    if check.left_out:
        reasons = "; ".join(report.get("failures", ()))
        return f"{check.model:<11}{check.precision.value:<8}{'-':>9}  {'-':<14}{'-':<11}left out at export: {reasons}"
    if not report.get("ran"):
        return f"{check.model:<11}{check.precision.value:<8}{size:>9}  {'-':<14}{'-':<11}not run: {report['reason']}"
    worst = max(report["max_abs_diff"].values())
    result = "ok" if report["passed"] else "FAILED: " + "; ".join(report["failures"])
    return f"{check.model:<11}{check.precision.value:<8}{size:>9}  {worst:<14.2e}{_agreement(report):<11}{result}"


def _agreement(report: Mapping[str, Any]) -> str:
    if "label_agreement" in report:
        return f"labels {report['label_agreement']:.0%}"
    if "answer_agreement" in report:
        return f"spans {report['answer_agreement']:.0%}"
    if "min_cosine_pooler" in report:
        return f"cos {report['min_cosine_pooler']:.4f}"
    return "-"


def _preview(vector: np.ndarray, count: int = 4) -> str:
    head = " ".join(f"{float(v):+.3f}" for v in vector[:count])
    return f"[{head}{' …' if vector.shape[0] > count else ''}]"


def _truncation_note(results: Sequence[Embedding | Classification]) -> str:
    if any(r.truncated for r in results):
        return "\n(+ : the text was cut at the model's maximum length)"
    return ""


def _megabytes(size: int | None) -> str:
    return "missing" if size is None else f"{size / 1e6:.1f} MB"


def _validation(report: dict[str, Any]) -> str:
    if not report or not report.get("ran", True):
        return "not run" + (f" ({report['reason']})" if report.get("reason") else "")
    status = "passed" if report.get("passed") else "FAILED"
    diffs = report.get("max_abs_diff") or {}
    worst = max(diffs.values()) if diffs else None
    return status + (f" (max |diff| {worst:.1e})" if worst is not None else "")


def _checksums(model: dict[str, Any]) -> str:
    if "checksums_ok" not in model:
        return ""
    return "ok" if model["checksums_ok"] else "MISMATCH"


def _metrics(training: dict[str, Any]) -> str:
    parts = []
    for key, value in training.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif isinstance(value, (int, str)):
            parts.append(f"{key} {value}")
        elif isinstance(value, dict):
            parts.append(f"{key} ({_metrics(value)})")
    return ", ".join(parts)
