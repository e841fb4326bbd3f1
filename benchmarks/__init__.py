"""bertrt's benchmark harness: bertrt against PyTorch, optimum and plain ONNX Runtime.

Run it through ``bertrt bench`` or from Python::

    from benchmarks import BenchConfig, run_benchmark
    results = run_benchmark(BenchConfig.preset("smoke", bundle=Path("models/minilm")))
    results["workloads"]["w1"]

The PyTorch-based baselines are imported only when requested (see ``benchmarks.systems``).
"""
