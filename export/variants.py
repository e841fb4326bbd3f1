"""Building the precision variants of an exported model, and where each is validated.

fp32 is the exporter's graph fused by ONNX Runtime's transformer optimizer; fp16 (GPUs) and
int8 (CPUs, calibrated fixed activation scales) are derived from that fused file, so fp32 is
always built first.

:func:`validation_device` is the one rule for where a variant is checked against PyTorch, at
export (``bertrt export``), on re-validation (``bertrt validate``) and when scoring
(``bertrt eval``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertrt.export.optimize import convert_fp16, optimize_fp32
from bertrt.export.quantize import Int8Config, calibration_feeds, quantize_int8

from bertrt.manifest import VARIANT_FILES
from bertrt.providers import cuda_failure, cuda_unavailable
from bertrt.types import Device, Precision

CalibrationText = str | tuple[str, str]
# Texts per calibration batch. The calibration run returns every quantized activation of a
# batch at once (a bert-large window: ~260 MB per text), so memory grows with the batch while
# the ranges, taken over real tokens only, do not depend on it; one text also pads nothing.
CALIBRATION_BATCH_SIZE = 1


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
    int8: Int8Config | None = None,
) -> BuiltVariant:
    """Write ``model_dir/<variant file>`` for ``precision``.

    ``config`` is the transformers config (heads, hidden size); ``calibration`` holds real
    texts (or question/context pairs for QA) that fix the int8 activation scales, tokenized
    with the model folder's ``tokenizer.json``; ``int8`` says how the int8 file is quantized.
    """
    target = model_dir / VARIANT_FILES[precision]
    fused = model_dir / VARIANT_FILES[Precision.FP32]
    if precision is Precision.FP32:
        report = optimize_fp32(raw_onnx, target, config.num_attention_heads, config.hidden_size)
    elif precision is Precision.FP16:
        report = convert_fp16(fused, target)
    else:
        feeds = calibration_feeds(model_dir / "tokenizer.json", list(calibration), max_length, CALIBRATION_BATCH_SIZE)
        report = quantize_int8(fused, target, feeds, int8 or Int8Config())
    return BuiltVariant(target.name, report)


def build_order(precisions: Sequence[Precision]) -> tuple[Precision, ...]:
    """The variants to build, fp32 first (the others are derived from it), without repeats."""
    return tuple(dict.fromkeys((Precision.FP32, *precisions)))


@dataclass(frozen=True)
class Placement:
    """Where one variant is validated: on ``device``, or, with ``device`` None, not here, for
    ``reason`` (which the variant's report records)."""

    device: Device | None
    reason: str = ""


def validation_device(
    precision: Precision,
    requested: Device = Device.AUTO,
    probe: Callable[[], str | None] = cuda_failure,
) -> Placement:
    """Where a ``precision`` variant is validated when ``requested`` (``--device``) is asked for.

    fp32 and fp16 files are served on GPUs, so they are validated on CUDA where a GPU runs
    (``auto`` or ``cuda``); without one, fp32 is validated on the CPU and fp16 is not run: the
    CPU provider computes fp16 files in fp32, which says nothing about fp16 arithmetic. int8
    files are built for the CPU provider and are validated there. ``cpu`` validates fp32 and
    int8 on the CPU and runs no fp16 check; ``cuda`` without a GPU is a DeviceError.
    ``probe`` says why CUDA cannot run, or None when it runs (:func:`bertrt.providers.cuda_failure`).

    >>> validation_device(Precision.FP16, probe=lambda: "no GPU")
    Placement(device=None, reason='fp16 is validated on a CUDA GPU and no GPU')
    """
    if requested is Device.CPU:
        if precision is Precision.FP16:
            return Placement(None, "fp16 is validated on a CUDA GPU and --device cpu was asked for")
        return Placement(Device.CPU, "--device cpu was asked for")
    failure = probe()
    if failure is not None and requested is Device.CUDA:
        raise cuda_unavailable(failure)
    if precision is Precision.INT8:
        return Placement(Device.CPU, "int8 files are built for the CPU provider")
    if failure is None:
        return Placement(Device.CUDA, "a CUDA GPU runs here")
    if precision is Precision.FP16:
        return Placement(None, f"fp16 is validated on a CUDA GPU and {failure}")
    return Placement(Device.CPU, f"no CUDA GPU runs here: {failure}")
