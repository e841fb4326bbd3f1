"""Validation of an exported ONNX file against the PyTorch model it came from.

Both run on the same batch of real texts of mixed lengths (question/context windows for a span
head), padded to the longest: every output is compared on the real (non-padding) tokens, and the
task's own check (its row in :data:`bertrt.export.tasks.EXPORTS`) compares what the outputs
mean: classifier labels must agree, QA answers decoded from both with the runtime's own span
decoder must agree.

Tolerances (stated in every report):
- fp32: max abs difference per output <= 1e-4, labels and answer spans identical.
- fp16 (GPU only): max abs difference on logits/embeddings <= 1e-2, labels identical;
  where no CUDA provider is present the variant is recorded as not run
  (:func:`bertrt.export.variants.validation_device` decides where each variant is checked).
- int8: judged by task agreement, not by elementwise difference (see ``INT8``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bertrt.export import samples
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


FP32 = Tolerance(max_abs_diff=1e-4)
FP16 = Tolerance(max_abs_diff=1e-2)
# int8 answers are judged mostly by overlap: on a handful of pairs, one span that gains or
# loses a word moves exact agreement by 15 points (a trained MiniLM head's int8 file gives the
# same span on 81% of SQuAD heldout8 questions, at 0.4 F1 below fp32).
INT8 = Tolerance(
    max_abs_diff=None, min_label_agreement=0.9, min_answer_agreement=0.5, min_answer_overlap=0.8, min_cosine=0.98
)
TOLERANCES: dict[Precision, Tolerance] = {Precision.FP32: FP32, Precision.FP16: FP16, Precision.INT8: INT8}


@dataclass(frozen=True)
class Reference:
    """Model inputs for the validation batch and the PyTorch outputs on them."""

    feeds: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    contexts: tuple[str, ...] = ()
    windows: Any = None


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
    with torch.inference_mode():
        result = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    outputs = {k: v.detach().float().numpy() for k, v in result.items() if isinstance(v, torch.Tensor)}
    return Reference(feeds=feeds, outputs=outputs, contexts=contexts, windows=windows)


def validate_onnx(
    onnx_path: Path,
    task: str,
    precision: Precision,
    reference: Reference,
    device: Device = Device.CPU,
) -> dict[str, Any]:
    """Compare one ONNX file with the PyTorch reference; return a JSON-ready report.

    The report's ``passed`` is False when any bound in the precision's tolerance is broken.
    """
    tolerance = TOLERANCES[precision]
    report: dict[str, Any] = {
        "ran": True,
        "device": device.value,
        "samples": int(next(iter(reference.feeds.values())).shape[0]),
        "tolerance": {k: v for k, v in asdict(tolerance).items() if v is not None},
    }
    outputs = run_onnx(onnx_path, reference.feeds, device)
    mask = reference.feeds["attention_mask"].astype(bool)
    report["max_abs_diff"] = {
        name: _masked_max_abs_diff(reference.outputs[name], outputs[name], mask)
        for name in outputs
        if name in reference.outputs
    }
    failures = []
    if tolerance.max_abs_diff is not None:
        failures += [
            f"{name} differs by {diff:.3g} > {tolerance.max_abs_diff:g}"
            for name, diff in report["max_abs_diff"].items()
            if diff > tolerance.max_abs_diff
        ]
    check = export_spec(task).check
    if check is not None:
        measured, task_failures = check(reference, outputs, tolerance)
        report.update(measured)
        failures += task_failures
    report["passed"] = not failures
    report["failures"] = failures
    return report


def not_run_report(precision: Precision, reason: str) -> dict[str, Any]:
    """The report of a variant that could not be checked here (fp16 without a GPU)."""
    tolerance = TOLERANCES[precision]
    return {
        "ran": False,
        "passed": None,
        "reason": reason,
        "tolerance": {k: v for k, v in asdict(tolerance).items() if v is not None},
    }


def run_onnx(onnx_path: Path, feeds: dict[str, np.ndarray], device: Device = Device.CPU) -> dict[str, np.ndarray]:
    """Run an ONNX file once through the runtime's own session (IO binding and all)."""
    outputs = OrtSession(onnx_path, device=device).run(feeds)
    return {name: np.asarray(value, dtype=np.float32) for name, value in outputs.items()}


def _masked_max_abs_diff(expected: np.ndarray, actual: np.ndarray, mask: np.ndarray) -> float:
    """Max |expected - actual| over real tokens; padding positions carry no meaning."""
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    if diff.ndim >= 2 and diff.shape[:2] == mask.shape:
        diff = diff[mask]
    return float(diff.max()) if diff.size else 0.0


def _backend(tokenizer: Any) -> Any:
    """A private copy of the fast tokenizer's ``tokenizers.Tokenizer`` (encode_qa reconfigures it)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
