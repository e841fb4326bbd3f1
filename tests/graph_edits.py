"""Hand-made faults in exported ONNX files: one value of one output changed, in the graph itself.

``edit_output`` appends nodes that add a value at chosen positions of a graph output (zeros
everywhere else, of the output's run-time shape), so the file computes exactly what it did,
except there: a real-token value off by 1e-3, a NaN, an infinity. Validation and the runtime
then meet a broken file the way they would meet one from a bad conversion, with nothing
patched in Python.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bertrt.manifest import MANIFEST_NAME, sha256_of


def edit_output(
    src: Path, dst: Path, output: str, changes: Sequence[tuple[tuple[int, ...], float]]
) -> Path:
    """Write ``dst``: ``src`` with ``value`` added to ``output`` at each ``(position, value)``.

    A position indexes every axis of the output (``(0, 0, 0)``: first row, first token, first
    feature); NaN and inf propagate through the addition, so they replace the value.
    """
    model = onnx.load(str(src))
    graph = model.graph
    original = f"{output}_before_edit"
    for node in graph.node:
        node.output[:] = [original if name == output else name for name in node.output]
        node.input[:] = [original if name == output else name for name in node.input]
    positions = np.array([position for position, _ in changes], dtype=np.int64)
    values = np.array([value for _, value in changes], dtype=np.float32)
    graph.initializer.extend([
        numpy_helper.from_array(positions, "edit_positions"),
        numpy_helper.from_array(values, "edit_values"),
    ])
    zero = helper.make_tensor("edit_zero", onnx.TensorProto.FLOAT, [1], [0.0])
    graph.node.extend([
        helper.make_node("Shape", [original], ["edit_shape"]),
        helper.make_node("ConstantOfShape", ["edit_shape"], ["edit_zeros"], value=zero),
        helper.make_node("ScatterND", ["edit_zeros", "edit_positions", "edit_values"], ["edit_delta"]),
        helper.make_node("Add", [original, "edit_delta"], [output]),
    ])
    onnx.save(model, str(dst))
    return dst


def edit_bundle_file(
    model_dir: Path, file: str, output: str, changes: Sequence[tuple[tuple[int, ...], float]]
) -> Path:
    """Edit ``model_dir/file`` in place and record its new sha256, as a broken export would
    have written it (the runtime's checksum check passes; the values are wrong)."""
    path = model_dir / file
    edit_output(path, path, output, changes)
    manifest_path = model_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["files"][file] = sha256_of(path)
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    return path
