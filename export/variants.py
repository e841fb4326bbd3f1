"""Building one precision variant of an exported model, and whether it can be checked here."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bertrt.manifest import VARIANT_FILES
from bertrt.types import Precision


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
    calibration_feeds: dict[str, np.ndarray],
) -> BuiltVariant:
    """Write ``model_dir/<variant file>`` for ``precision`` from the raw exporter output."""
    target = model_dir / VARIANT_FILES[precision]
    if precision is Precision.FP32:
        shutil.copyfile(raw_onnx, target)
        return BuiltVariant(target.name, {"graph": "as exported"})
    raise NotImplementedError(f"{precision.value} variants are not built yet")


def variant_runs_here(precision: Precision) -> tuple[bool, str]:
    """Whether this machine can validate ``precision``; if not, the reason, for the manifest."""
    if precision is Precision.FP16 and not cuda_available():
        return False, "fp16 is validated on a CUDA GPU and this machine has none"
    return True, ""


def cuda_available() -> bool:
    """True when the CUDA execution provider really creates sessions on this machine."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        from onnx import TensorProto, helper

        node = helper.make_node("Identity", ["x"], ["y"])
        graph = helper.make_graph(
            [node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(model.SerializeToString(),
                                       options, providers=["CUDAExecutionProvider"])
        return "CUDAExecutionProvider" in session.get_providers()
    except Exception:  # any failure to start CUDA means "not here"
        return False
