"""The GPU check: parity and latency of bertrt's CUDA path against PyTorch, in one process.

Builds a BERT-base-shaped classifier with random weights (weights do not change speed) and,
when given, loads a MiniLM bundle; exports ONNX on the spot (fp32 fused, fp16), checks ORT's
outputs against PyTorch on the same device (fp32 and fp16 references), then times, at batch
1/8/32 x sequence 128 and batch 1 x 384:

- PyTorch eager fp32 and fp16 (``torch.inference_mode``),
- ONNX Runtime ``session.run`` without IO binding,
- bertrt's session (IO binding, buffers reused) fp32 and fp16,

and the base encoder at batch 32 x 128 with and without IO binding (its big output is where
copies hurt). Writes ``gpu_check.json`` and ``gpu_check.png`` into the output folder.

Rehearse on the CPU (only the provider changes)::

    python -m bertrt.bench.gpu_check --device cpu --out /tmp/gpu-check --quick

On the GPU machine (after installing onnxruntime-gpu, see the README's GPU section)::

    python -m bertrt.bench.gpu_check --device cuda --out $OUT
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from bertrt.options import RuntimeOptions
from bertrt.session import OrtSession
from bertrt.types import Device

SHAPES = ((1, 128), (8, 128), (32, 128), (1, 384))
QUICK_SHAPES = ((1, 16), (4, 32))


def main() -> None:
    """Parse arguments, run every check, write JSON and PNG."""
    args = _parse()
    device = Device(args.device)
    torch_device = torch.device("cuda" if device is Device.CUDA else "cpu")
    if device is Device.CUDA:
        import onnxruntime

        if hasattr(onnxruntime, "preload_dlls"):
            onnxruntime.preload_dlls()
    config = _tiny_config() if args.quick else BertConfig()  # BertConfig() = bert-base dimensions
    shapes = QUICK_SHAPES if args.quick else SHAPES
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    results: dict[str, Any] = {"machine": _machine(device), "subjects": {}}

    torch.manual_seed(0)
    classifier = BertForSequenceClassification(config).eval()
    files = _export(classifier, work / "classifier", config)
    results["subjects"]["bert-base-classifier"] = _check_subject(
        classifier, files, "logits", shapes, device, torch_device, args.repeats
    )
    encoder = BertModel(config).eval()
    encoder_files = _export(encoder, work / "encoder", config, outputs=("last_hidden_state", "pooler_output"))
    batch, seq = (4, 32) if args.quick else (32, 128)
    results["io_binding_embedder"] = _io_binding_ratio(encoder_files["fp32"], batch, seq, config, device, args.repeats)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    _plot(results, args.out / "gpu_check.png")
    print(json.dumps(_headline(results), indent=2))


def _check_subject(
    model: Any, files: dict[str, Path], output: str, shapes: tuple[tuple[int, int], ...],
    device: Device, torch_device: torch.device, repeats: int,
) -> dict[str, Any]:
    """Parity of fp32/fp16 files against PyTorch, then latency of every system per shape."""
    vocab = model.config.vocab_size
    feeds = _feeds(8, 64, vocab)
    model = model.to(torch_device)
    with torch.inference_mode():
        reference = model(**_torch_inputs(feeds, torch_device))[0].float().cpu().numpy()
        reference_half = model.half()(**_torch_inputs(feeds, torch_device))[0].float().cpu().numpy()
    model.float()
    sessions = {p: OrtSession(path, device=device) for p, path in files.items()}
    parity = {}
    for precision, session in sessions.items():
        out = session.run(feeds)[output]
        parity[precision] = {
            "max_abs_diff_vs_torch_fp32": float(np.abs(out - reference).max()),
            "max_abs_diff_vs_torch_fp16": float(np.abs(out - reference_half).max()),
            "labels_identical": bool((out.argmax(-1) == reference.argmax(-1)).all()),
        }
    plain = OrtSession(files["fp32"], device=device, options=RuntimeOptions(io_binding=False))
    latency: dict[str, dict[str, Any]] = {}
    for batch, seq in shapes:
        shape_feeds = _feeds(batch, seq, vocab)
        inputs = _torch_inputs(shape_feeds, torch_device)
        systems: dict[str, Callable[[], Any]] = {
            "torch-fp32": partial(_torch_run, model, inputs, torch_device),
            "ort-run-fp32": partial(plain.run, shape_feeds),
            "bertrt-fp32": partial(sessions["fp32"].run, shape_feeds),
        }
        if "fp16" in sessions:
            systems["bertrt-fp16"] = partial(sessions["fp16"].run, shape_feeds)
        timings = {name: _time(run, repeats) for name, run in systems.items()}
        model.half()
        timings["torch-fp16"] = _time(partial(_torch_run, model, inputs, torch_device), repeats)
        model.float()
        latency[f"{batch}x{seq}"] = timings
    return {"parity": parity, "latency_ms": latency}


def _io_binding_ratio(
    path: Path, batch: int, seq: int, config: BertConfig, device: Device, repeats: int
) -> dict[str, Any]:
    feeds = _feeds(batch, seq, config.vocab_size)
    bound = OrtSession(path, device=device)
    plain = OrtSession(path, device=device, options=RuntimeOptions(io_binding=False))
    with_binding = _time(lambda: bound.run(feeds), repeats)
    without = _time(lambda: plain.run(feeds), repeats)
    return {
        "shape": f"{batch}x{seq}",
        "io_binding_ms": with_binding,
        "run_ms": without,
        "speedup_p50": without["p50"] / with_binding["p50"],
    }


def _export(model: Any, folder: Path, config: BertConfig, outputs: tuple[str, ...] = ("logits",)) -> dict[str, Path]:
    """fp32 (fused where the optimizer is importable) and fp16 ONNX files of ``model``."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / "raw.onnx"
    feeds = _torch_inputs(_feeds(2, 16, config.vocab_size), torch.device("cpu"))
    axes = {name: {0: "batch", 1: "sequence"} for name in feeds}
    axes.update({name: {0: "batch"} for name in outputs})
    torch.onnx.export(
        model, (), str(raw), kwargs=feeds, input_names=list(feeds), output_names=list(outputs),
        dynamic_axes=axes, opset_version=17, dynamo=False,
    )
    from bertrt.export.optimize import convert_fp16, optimize_fp32

    fused = folder / "model.onnx"
    optimize_fp32(raw, fused, config.num_attention_heads, config.hidden_size)
    half = folder / "model.fp16.onnx"
    convert_fp16(fused, half)
    return {"fp32": fused, "fp16": half}


def _feeds(batch: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 1000 + seq)
    ids = rng.integers(1000 % vocab, vocab, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[batch // 2 :, seq // 2 :] = 0  # half the rows padded: masks must be honoured
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _torch_inputs(feeds: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}


def _torch_run(model: Any, inputs: dict[str, torch.Tensor], device: torch.device) -> Any:
    with torch.inference_mode():
        out = model(**inputs)[0]
        host = out.float().cpu()  # end to end: the result on the host, as the runtime returns it
    if device.type == "cuda":
        torch.cuda.synchronize()
    return host


def _time(run: Callable[[], Any], repeats: int) -> dict[str, float]:
    for _ in range(max(3, repeats // 10)):
        run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1e3)
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "n": repeats}


def _machine(device: Device) -> dict[str, Any]:
    import onnxruntime

    info = {"device": device.value, "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    if device is Device.CUDA:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    subject = results["subjects"]["bert-base-classifier"]
    first = next(iter(subject["latency_ms"]))
    timings = subject["latency_ms"][first]
    return {
        "machine": results["machine"],
        "shape": first,
        "p50_ms": {name: round(t["p50"], 3) for name, t in timings.items()},
        "speedup_bertrt_fp16_vs_torch_fp32": timings["torch-fp32"]["p50"] / timings["bertrt-fp16"]["p50"],
        "fp16_parity": subject["parity"].get("fp16"),
        "io_binding_speedup_embedder": results["io_binding_embedder"]["speedup_p50"],
    }


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = results["subjects"]["bert-base-classifier"]["latency_ms"]
    shapes = list(latency)
    systems = list(next(iter(latency.values())))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(systems)
    for i, name in enumerate(systems):
        p50 = [latency[s][name]["p50"] for s in shapes]
        ax.bar([x + i * width for x in range(len(shapes))], p50, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(shapes))], shapes)
    ax.set_ylabel("p50 latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"BERT-base-shaped classifier on {results['machine'].get('gpu', results['machine']['cpu'])}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _tiny_config() -> BertConfig:
    return BertConfig(
        vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    )


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.png")
    parser.add_argument("--repeats", type=int, default=100, help="timed runs per system and shape")
    parser.add_argument("--quick", action="store_true", help="tiny model and shapes: a rehearsal in seconds")
    return parser.parse_args()


if __name__ == "__main__":
    main()
