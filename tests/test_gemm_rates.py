"""``bertrt.bench.gemm_rates``: the fp32 and int8 GEMM kernels at an encoder's shapes."""

from __future__ import annotations

import json
from pathlib import Path

from bertrt.bench.gemm_rates import amx_permission, encoder_products, main
from bertrt.bench.physical import BertShape


def test_the_products_of_one_layer() -> None:
    assert encoder_products(BertShape(layers=6, hidden=384, intermediate=1536)) == {
        "qkv": (384, 1152), "attention-output": (384, 384), "ffn-input": (384, 1536), "ffn-output": (1536, 384)
    }


def test_the_command_writes_a_rate_per_product(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "rates.json"
    assert main(["--models", str(tiny_bundle), "--batch", "2", "--seq", "16", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [p["product"] for p in result["products"]] == ["qkv", "attention-output", "ffn-input", "ffn-output"]
    assert all(p["rows"] == 32 and p["fp32_gflops"] > 0 and p["int8_gops"] > 0 for p in result["products"])
    assert result["amx_permission"] == amx_permission()
    assert result["machine"]["cpu_model"]
