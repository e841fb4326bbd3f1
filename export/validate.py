"""Validation of an exported ONNX file against the PyTorch model it came from.

Both run on the same batch of real texts of mixed lengths (question/context windows for a span
head), padded to the longest: every output is compared on the real (non-padding) tokens, and the
task's own check (its row in :data:`bertrt.export.tasks.EXPORTS`) compares what the outputs
mean: classifier labels must agree, QA answers decoded from both with the runtime's own span
decoder must agree.

Tolerances (stated in every report):
- any precision: every output value is finite (a NaN or inf anywhere fails the file, naming the
  output and how many values are not finite).
- fp32: max abs difference per output <= 1e-4, labels and answer spans identical.
- fp16 (GPU only): max abs difference on logits/embeddings <= 1e-2, labels identical;
  where no CUDA provider is present the variant is recorded as not run
  (:func:`bertrt.export.variants.validation_device` decides where each variant is checked).
- int8: judged by task agreement, not by elementwise difference (see ``INT8``).

An untrained head (``trained: false``) has near-tied logits: any perturbation moves its label or
span, so agreement says nothing about the file. Its variants are judged on what means
something, the hidden states the head reads and the logits themselves, each within a bound
stated per precision (:data:`UNTRAINED`); label and span agreement are measured and reported,
not judged.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bertrt.export import samples
from bertrt.export.head_probe import HEAD_INPUT, expose_head_input, head_input_hook
from bertrt.export.tasks import export_spec

from bertrt.qa_windows import encode_qa
from bertrt.session import OrtSession
from bertrt.tasks import Head, task_spec
from bertrt.types import Device, Precision


@dataclass(frozen=True)
class Tolerance:
    """When a variant passes: elementwise bound and task-agreement floors.

    ``min_answer_agreement`` is the share of QA pairs whose best span is exactly PyTorch's;
    ``min_answer_overlap`` the mean SQuAD token F1 between the two answers (0-1), which
    counts "Paris" against "Paris, France" as mostly right.
    """

    max_abs_diff: float | None
    min_label_agreement: float = 1.0
    min_answer_agreement: float = 1.0
    min_answer_overlap: float | None = None
    min_cosine: float | None = None
    min_hidden_cosine: float | None = None


FP32 = Tolerance(max_abs_diff=1e-4)
FP16 = Tolerance(max_abs_diff=1e-2)
# int8 answers are judged mostly by overlap: on a handful of pairs, one span that gains or
# loses a word moves exact agreement by 15 points (a trained MiniLM head's int8 file gives the
# same span on 81% of SQuAD heldout8 questions, at 0.4 F1 below fp32).
INT8 = Tolerance(
    max_abs_diff=None, min_label_agreement=0.9, min_answer_agreement=0.5, min_answer_overlap=0.8, min_cosine=0.98
)
TOLERANCES: dict[Precision, Tolerance] = {Precision.FP32: FP32, Precision.FP16: FP16, Precision.INT8: INT8}
# int8 bounds for untrained heads, with margin over what good int8 files measure (MiniLM's
# random span head: logits within 0.12, hidden-state cosine >= 0.974; its random classifier
# head: 0.005 and 0.992; a bert-base-shaped random classifier: 0.016 and 0.9994).
UNTRAINED_INT8_LOGITS = 0.5
UNTRAINED_INT8_HIDDEN = 0.95
# Untrained heads: the logits within an elementwise bound, the head's input (hidden states)
# within a cosine floor per real token; agreement is not judged (0.0 floors).
UNTRAINED: dict[Precision, Tolerance] = {
    Precision.FP32: Tolerance(1e-4, 0.0, 0.0, min_hidden_cosine=0.9999),
    Precision.FP16: Tolerance(1e-2, 0.0, 0.0, min_hidden_cosine=0.999),
    Precision.INT8: Tolerance(UNTRAINED_INT8_LOGITS, 0.0, 0.0, min_hidden_cosine=UNTRAINED_INT8_HIDDEN),
}


def tolerance_for(precision: Precision, trained: bool = True) -> Tolerance:
    """The bounds a ``precision`` variant is judged by; an untrained head's are :data:`UNTRAINED`.

    >>> tolerance_for(Precision.INT8, trained=False).min_label_agreement
    0.0
    """
    return TOLERANCES[precision] if trained else UNTRAINED[precision]


@dataclass(frozen=True)
class Reference:
    """Model inputs for the validation batch and the PyTorch outputs on them; ``head_input``
    is what the task head read (None for a bare encoder)."""

    feeds: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    contexts: tuple[str, ...] = ()
    windows: Any = None
    head_input: np.ndarray | None = None


def torch_reference(task: str, model: Any, tokenizer: Any, max_length: int, doc_stride: int | None) -> Reference:
    """Run the PyTorch model once on the validation batch for ``task``."""
    if task_spec(task).head is Head.SPAN:
        questions = [q for q, _ in samples.QA_PAIRS]
        contexts = tuple(c for _, c in samples.QA_PAIRS)
        windows = encode_qa(_backend(tokenizer), questions, list(contexts), max_length, doc_stride or 128)
        feeds = {
            "input_ids": windows.input_ids,
            "attention_mask": windows.attention_mask,
            "token_type_ids": windows.token_type_ids,
        }
    else:
        contexts, windows = (), None
        encoded = tokenizer(
            list(samples.SENTENCES), padding=True, truncation=True, max_length=max_length, return_tensors="np"
        )
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()}
    with torch.inference_mode(), head_input_hook(model) as captured:
        result = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    outputs = {k: v.detach().float().numpy() for k, v in result.items() if isinstance(v, torch.Tensor)}
    head_input = captured[0].float().numpy() if export_spec(task).head_architecture else None
    return Reference(feeds=feeds, outputs=outputs, contexts=contexts, windows=windows, head_input=head_input)


def validate_onnx(
    onnx_path: Path,
    task: str,
    precision: Precision,
    reference: Reference,
    device: Device = Device.CPU,
    trained: bool = True,
) -> dict[str, Any]:
    """Compare one ONNX file with the PyTorch reference; return a JSON-ready report.

    The report's ``passed`` is False when any output holds a NaN or inf, or when any bound of
    the precision's tolerance is broken (:func:`tolerance_for`: an untrained head is judged on
    its hidden states and logits, its agreement only reported).
    """
    tolerance = tolerance_for(precision, trained)
    report: dict[str, Any] = {
        "ran": True,
        "device": device.value,
        "samples": int(next(iter(reference.feeds.values())).shape[0]),
        "tolerance": _stated(tolerance),
    }
    if not trained:
        report["judged_on"] = "hidden states and logits (untrained head: agreement is reported, not judged)"
    outputs = _run_for_check(onnx_path, task, reference, device, probe_head=not trained)
    head_input = outputs.pop(HEAD_INPUT, None)
    mask = reference.feeds["attention_mask"].astype(bool)
    compared = [name for name in outputs if name in reference.outputs]
    non_finite = {name: int(np.size(outputs[name]) - np.isfinite(outputs[name]).sum()) for name in compared}
    report["max_abs_diff"] = {
        name: _masked_max_abs_diff(reference.outputs[name], outputs[name], mask) for name in compared
    }
    failures = [
        f"{name} holds {count} non-finite value{'s' if count > 1 else ''} (NaN or inf)"
        for name, count in non_finite.items()
        if count
    ]
    if failures:
        # Nothing else is measured on a file that emits NaN: every number below would be NaN.
        report["non_finite"] = {name: count for name, count in non_finite.items() if count}
        return {**report, "passed": False, "failures": failures}
    if tolerance.max_abs_diff is not None:
        failures += [
            f"{name} differs by {diff:.3g} > {tolerance.max_abs_diff:g}"
            for name, diff in report["max_abs_diff"].items()
            if diff > tolerance.max_abs_diff
        ]
    if head_input is not None and reference.head_input is not None:
        failures += _hidden_state_check(reference.head_input, head_input, mask, tolerance, report)
    check = export_spec(task).check
    if check is not None:
        measured, task_failures = check(reference, outputs, tolerance)
        report.update(measured)
        failures += task_failures
    report["passed"] = not failures
    report["failures"] = failures
    return report


def not_run_report(precision: Precision, reason: str, trained: bool = True) -> dict[str, Any]:
    """The report of a variant that could not be checked here (fp16 without a GPU)."""
    return {"ran": False, "passed": None, "reason": reason, "tolerance": _stated(tolerance_for(precision, trained))}


def run_onnx(onnx_path: Path, feeds: dict[str, np.ndarray], device: Device = Device.CPU) -> dict[str, np.ndarray]:
    """Run an ONNX file once through the runtime's own session (IO binding and all)."""
    outputs = OrtSession(onnx_path, device=device).run(feeds)
    return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}


def _run_for_check(
    onnx_path: Path, task: str, reference: Reference, device: Device, probe_head: bool
) -> dict[str, np.ndarray]:
    """The file's outputs on the reference batch; with ``probe_head``, also its head's input
    (:data:`HEAD_INPUT`), read from a copy of the file that exposes it."""
    if not probe_head or reference.head_input is None:
        return run_onnx(onnx_path, reference.feeds, device)
    logits = task_spec(task).outputs[0]
    with tempfile.TemporaryDirectory(prefix="bertrt-probe-") as work:
        return run_onnx(expose_head_input(onnx_path, logits, Path(work)), reference.feeds, device)


def _hidden_state_check(
    expected: np.ndarray, actual: np.ndarray, mask: np.ndarray, tolerance: Tolerance, report: dict[str, Any]
) -> list[str]:
    """The smallest cosine between PyTorch's and the file's head input over real tokens."""
    if expected.ndim == 3 and expected.shape[:2] == mask.shape:
        expected, actual = expected[mask], actual[mask]
    expected, actual = expected.reshape(len(expected), -1), actual.reshape(len(actual), -1)
    cosine = float(_row_cosines(expected, actual).min())
    floor = tolerance.min_hidden_cosine
    if not np.isfinite(cosine):
        return ["the hidden states hold NaN or inf"]
    report["min_cosine_hidden"] = cosine
    return [f"hidden-state cosine {cosine:.4f} < {floor}"] if floor is not None and cosine < floor else []


def _row_cosines(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    a, b = expected.astype(np.float64), actual.astype(np.float64)
    cosines: np.ndarray = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    return cosines


def _stated(tolerance: Tolerance) -> dict[str, float]:
    return {k: v for k, v in asdict(tolerance).items() if v is not None}


def _masked_max_abs_diff(expected: np.ndarray, actual: np.ndarray, mask: np.ndarray) -> float:
    """Max |expected - actual| over real tokens (padding positions carry no meaning) where
    both are finite: non-finite values are counted apart, and a report must stay valid JSON."""
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    if diff.ndim >= 2 and diff.shape[:2] == mask.shape:
        diff = diff[mask]
    diff = diff[np.isfinite(diff)]
    return float(diff.max()) if diff.size else 0.0


def _backend(tokenizer: Any) -> Any:
    """A private copy of the fast tokenizer's ``tokenizers.Tokenizer`` (encode_qa reconfigures it)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
