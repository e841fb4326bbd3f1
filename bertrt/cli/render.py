"""Human-readable text for the runtime commands: compact tables, one row per result.

Example::

    >>> print(table(["#", "label"], [["0", "positive"]]))
    #  label
    0  positive
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bertrt.results import Classification, Embedding, QAResult

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


def info_text(description: dict[str, Any]) -> str:
    """The bundle's recipe, versions, and per model its variants, sizes and validation."""
    lines = [
        f"bundle   {description['path']}",
        f"recipe   {description['recipe']}   created {description['created']}",
        "versions " + ", ".join(f"{k} {v}" for k, v in description["versions"].items()),
        "",
    ]
    rows = []
    for folder, model in description["models"].items():
        for precision, variant in model["variants"].items():
            rows.append(
                [
                    folder,
                    model["task"],
                    "yes" if model["trained"] else "NO",
                    precision,
                    _megabytes(variant["bytes"]),
                    _validation(variant["validation"]),
                    _checksums(model),
                ]
            )
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
    return "\n".join(lines)


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
