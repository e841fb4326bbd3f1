"""The CPU graph rewrites one at a time, as files to profile: each rewrite's cost is the
difference between two neighbouring rungs.

Start from a model folder exported before the rewrites (fused ``model.onnx`` with
``SkipLayerNormalization``; ``model.int8.onnx`` with ``MatMulInteger -> Cast -> Mul``) and
write, next to a copy of its ``config.json`` (which ``op_profile`` reads the vocabulary from):

- ``fp32-before.onnx``, ``fp32-split.onnx`` (:func:`~bertrt.export.rewrite.split_skip_layer_norm`);
- ``int8-before.onnx``, ``int8-dq.onnx`` (:func:`~bertrt.export.rewrite.fuse_dequantization`),
  ``int8-dq-split.onnx`` (then the split), ``int8-dq-split-fold.onnx``
  (then :func:`~bertrt.export.rewrite.fold_biases`: what ``bertrt export`` now writes).

Each rung is checked against its ``before`` file on a padded mixed-length batch and the
largest difference printed, so a rung that computes something else is seen at once.

Example (also a command)::

    python -m bertrt.bench.rewrite_ladder models/minilm-before/embedder /tmp/ladder
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import onnx
from bertrt.export.optimize import max_abs_diff, probe_feeds
from bertrt.export.rewrite import fold_biases, fuse_dequantization, split_skip_layer_norm

Rewrite = Callable[[onnx.ModelProto], int]
# (source file in the model folder, rung prefix, the rewrites applied in turn)
LADDERS: tuple[tuple[str, str, tuple[tuple[str, Rewrite], ...]], ...] = (
    ("model.onnx", "fp32", (("split", split_skip_layer_norm),)),
    ("model.int8.onnx", "int8", (("dq", fuse_dequantization), ("split", split_skip_layer_norm), ("fold", fold_biases))),
)
# Mixed lengths, right-padded: the rewrites must keep every real token's outputs.
_PROBE_LENGTHS = (40, 7, 128, 3)


def write_ladder(model_dir: Path, out: Path) -> dict[str, dict[str, object]]:
    """Write every rung of :data:`LADDERS` into ``out``; return, per rung file, how many places
    its last rewrite changed and its largest output difference from the ``before`` file."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_dir / "config.json", out / "config.json")
    report: dict[str, dict[str, object]] = {}
    for source, prefix, steps in LADDERS:
        if not (model_dir / source).is_file():
            continue
        model = onnx.load(str(model_dir / source))
        before = out / f"{prefix}-before.onnx"
        onnx.save(model, str(before))
        feeds = [probe_feeds(before, _PROBE_LENGTHS)]
        name = prefix
        for step, rewrite in steps:
            changed = rewrite(model)
            name = f"{name}-{step}"
            rung = out / f"{name}.onnx"
            onnx.save(model, str(rung))
            report[rung.name] = {"rewritten": changed, "max_abs_diff": max_abs_diff(before, rung, feeds)}
    return report


def main() -> None:
    """Write the ladder and print its report as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="A model folder exported before the rewrites.")
    parser.add_argument("out", type=Path, help="Folder for the rung files.")
    args = parser.parse_args()
    print(json.dumps(write_ladder(args.model_dir, args.out), indent=2))


if __name__ == "__main__":
    main()
