"""Building the precision variants of an exported model, and whether they can be checked here.

fp32 is the exporter's graph fused by ONNX Runtime's transformer optimizer; fp16 (GPUs) and
int8 (CPUs, calibrated fixed activation scales) are derived from that fused file, so fp32 is
always built first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort
from bertrt.export.optimize import convert_fp16, optimize_fp32
from bertrt.export.quantize import calibration_feeds, quantize_int8
from onnx import TensorProto, helper

from bertrt.manifest import VARIANT_FILES
from bertrt.types import Precision

CalibrationText = str | tuple[str, str]


@dataclass(frozen=True)
class BuiltVariant:
    """A variant file written into the model folder, with what optimization did to it."""

    file: str
    optimization: dict[str, Any] = field(default_factory=dict)


def build_variant(
    raw_onnx: Path,
    model_dir: Path,
    precision: Precision,
    config: Any,
    calibration: Sequence[CalibrationText],
    max_length: int,
) -> BuiltVariant:
    """Write ``model_dir/<variant file>`` for ``precision``.

    ``config`` is the transformers config (heads, hidden size); ``calibration`` holds real
    texts (or question/context pairs for QA) that fix the int8 activation scales, tokenized
    with the model folder's ``tokenizer.json``.
    """
    target = model_dir / VARIANT_FILES[precision]
    fused = model_dir / VARIANT_FILES[Precision.FP32]
    if precision is Precision.FP32:
        report = optimize_fp32(raw_onnx, target, config.num_attention_heads, config.hidden_size)
    elif precision is Precision.FP16:
        report = convert_fp16(fused, target)
    else:
        feeds = calibration_feeds(model_dir / "tokenizer.json", list(calibration), max_length)
        report = quantize_int8(fused, target, feeds)
    return BuiltVariant(target.name, report)


def build_order(precisions: Sequence[Precision]) -> tuple[Precision, ...]:
    """The variants to build, fp32 first (the others are derived from it), without repeats."""
    return tuple(dict.fromkeys((Precision.FP32, *precisions)))


def variant_runs_here(precision: Precision) -> tuple[bool, str]:
    """Whether this machine can validate ``precision``; if not, the reason, for the manifest.

    fp16 files do load on the CPU provider, but it computes them in fp32, which says nothing
    about fp16 arithmetic: their tolerance is checked only where CUDA runs them.
    """
    if precision is Precision.FP16 and not cuda_available():
        return False, "fp16 is validated on a CUDA GPU and this machine has none"
    return True, ""


def cuda_available() -> bool:
    """True when the CUDA execution provider really creates sessions on this machine."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CUDAExecutionProvider"])
    except Exception:  # ORT's pybind errors share no base class: any failure means "not here"
        return False
    return "CUDAExecutionProvider" in session.get_providers()
