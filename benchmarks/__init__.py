"""bertrt's benchmark harness: bertrt against PyTorch, optimum and plain ONNX Runtime.

Run it through ``bertrt bench`` or from Python::

    from bertrt.bench.config import BenchConfig
    from bertrt.bench.harness import run_benchmark
    results = run_benchmark(BenchConfig.preset("smoke", bundle=Path("models/minilm")))
    results["figures"]["w1.classify.short"]

This package file stays empty of imports on purpose: the footprint probe runs
``python -m bertrt.bench.footprint_child`` and must measure only the stack under test.
The PyTorch-based baselines are imported only when requested (see ``bertrt.bench.systems``).
"""
