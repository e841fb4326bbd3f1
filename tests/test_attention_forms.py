"""``bertrt.bench.attention_forms``: each attention form computes what the fused node does.

Tolerance: 1e-4 absolute on real tokens. The forms run the same arithmetic in other kernels
(another summation order), so fp32 outputs of order one differ by float32 rounding; a
misplaced bias, mask or head split changes them by order 0.1.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from bertrt.bench.attention_forms import FORMS, rewrite_attention
from bertrt.export.optimize import max_abs_diff, probe_feeds

TOLERANCE = 1e-4


@pytest.mark.parametrize("file", ["model.onnx", "model.int8.onnx"])
@pytest.mark.parametrize("form", [f for f in FORMS if f != "fused"])
def test_each_form_keeps_the_fused_outputs(tiny_bundle: Path, tmp_path: Path, file: str, form: str) -> None:
    fused = tiny_bundle / "embedder" / file
    rewritten = tmp_path / f"{form}.onnx"
    model = rewrite_attention(onnx.load(str(fused)), form)
    onnx.save(model, str(rewritten))
    ops = [n.op_type for n in model.graph.node]
    assert "Attention" not in ops and "QAttention" not in ops
    # Without a mask the flash path attends to padding too, so that form is checked unpadded.
    lengths = [(7, 7, 7)] if form == "mha-no-mask" else [(9, 2, 5, 1), (17, 3)]
    batches = [probe_feeds(fused, rows, seed) for seed, rows in enumerate(lengths)]
    assert max(max_abs_diff(fused, rewritten, batches).values()) < TOLERANCE


def test_without_the_mask_padding_is_attended_to(tiny_bundle: Path, tmp_path: Path) -> None:
    """The reason ``mha-no-mask`` is only timed on unpadded batches: it is wrong on padded ones."""
    fused = tiny_bundle / "embedder" / "model.onnx"
    rewritten = tmp_path / "no-mask.onnx"
    onnx.save(rewrite_attention(onnx.load(str(fused)), "mha-no-mask"), str(rewritten))
    assert max(max_abs_diff(fused, rewritten, [probe_feeds(fused, (9, 2, 5, 1))]).values()) > 1e-2


def test_an_unknown_form_is_refused(tiny_bundle: Path) -> None:
    with pytest.raises(ValueError, match="Unknown attention form"):
        rewrite_attention(onnx.load(str(tiny_bundle / "embedder" / "model.onnx")), "flash")
