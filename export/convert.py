"""PyTorch -> ONNX conversion with optimum's exporter, dynamic batch and sequence axes.

The exporter's task name (and, where the stock one is not enough, its OnnxConfig) comes from
the task's row in :data:`bertrt.export.tasks.EXPORTS`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import onnx
from bertrt.export.tasks import export_spec
from optimum.exporters.onnx import onnx_export_from_model

from bertrt.manifest import TensorSpec

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
}


def export_onnx(model: Any, task: str, out_dir: Path, opset: int) -> Path:
    """Export a transformers BERT model of ``task`` to ``out_dir/model.onnx``; returns that path.

    Validation against PyTorch is done by :mod:`bertrt.export.validate` with real texts, so
    optimum's own random-input check is skipped here.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = export_spec(task)
    optimum_task = spec.optimum_task
    custom: dict[str, Any] | None = None
    if spec.onnx_config is not None:
        custom = {"model": spec.onnx_config(model.config, task=optimum_task)}
    with _quiet_exporter():
        onnx_export_from_model(
            model.eval(),
            out_dir,
            task=optimum_task,
            opset=opset,
            do_validation=False,
            custom_onnx_configs=custom,
        )
    return out_dir / "model.onnx"


def store_weights_externally(onnx_path: Path) -> Path:
    """Rewrite ``onnx_path`` with its weights in ``<name>.data`` beside it; returns the path.

    A graph whose weights are external is what ONNX Runtime's transformer optimizer streams:
    its first pass then writes the rewritten weights to a file instead of building them into
    one in-memory protobuf (measured on a 437 MB bert-base graph: 0.7 GB peak instead of
    1.9 GB), and the graph may pass 2 GB. Call it once PyTorch is gone: the rewrite holds the
    graph in memory once.
    """
    model = onnx.load(str(onnx_path))
    onnx.save(model, str(onnx_path), save_as_external_data=True, location=f"{onnx_path.name}.data")
    return onnx_path


def graph_signature(onnx_path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The graph's inputs and outputs as TensorSpecs (symbolic axes as their names)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return tuple(_spec(v) for v in graph.input), tuple(_spec(v) for v in graph.output)


def _spec(value: Any) -> TensorSpec:
    tensor_type = value.type.tensor_type
    shape = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tensor_type.shape.dim)
    dtype = _ONNX_DTYPES.get(tensor_type.elem_type, str(tensor_type.elem_type))
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)


class _quiet_exporter:
    """Silence the tracer and optimum warnings that say nothing actionable to a bertrt user."""

    def __enter__(self) -> None:
        self._filters = warnings.catch_warnings()
        self._filters.__enter__()
        warnings.simplefilter("ignore")
        self._logger = logging.getLogger("optimum")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._logger.setLevel(self._level)
        self._filters.__exit__(kind, error, trace)
