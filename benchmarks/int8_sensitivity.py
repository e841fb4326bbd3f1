"""Which parts of the QA model cost the int8 file its agreement with PyTorch.

Each configuration quantizes the bundle's fused fp32 QA file with the export's own static
scheme (:func:`bertrt.export.quantize.quantize_int8`, calibrated on the first questions of
the training data as the export does), keeping a different set of nodes in fp32, and
answers SQuAD questions with it through the runtime. The figures are the share of questions
whose answer text equals PyTorch's (the `bertrt eval --task qa` answer agreement) and the
file's SQuAD EM/F1 beside PyTorch's.

Configurations: ``default`` (the embedder's scheme: no smoothing, the head in fp32),
``qa-export`` (what the export builds for QA: :data:`bertrt.export.tasks.SPAN_INT8`),
``keep-GROUP`` (the head and one group of :data:`~bertrt.export.quantize.KEEP_GROUPS` in
fp32), ``keep-ffn`` (both feed-forward matrices of every layer),
``smooth-auto-keep-embeddings-ffn-output-0-N`` and ``smooth-auto-keep-embeddings-ffn-0-N``
(smoothed, the embedding tables and the FFN output products, or both FFN products, of layers
0 to N in fp32), ``only-layerN`` (only layer N
and the embeddings quantized), ``per-tensor`` (one weight scale per matrix), ``smooth-A``
(smoothing at strength A, :mod:`bertrt.export.smooth`), ``smooth-auto`` (strength chosen per
product) and its combinations with fp32 embeddings and FFN outputs. The bundle is copied; its
files are never changed.

Example::

    python -m bertrt.bench.int8_sensitivity --models models/minilm \\
        --data ../shared/data/squad/dev-v1.1.heldout8.json --limit 400 \\
        --calibration ../shared/data/squad/dev-v1.1.train40.json \\
        --out benchmarks/results/int8-qa-sensitivity.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import bertrt
from bertrt.manifest import ModelManifest, sha256_of
from bertrt.types import Precision, Task

LAYER_NODES = ("attention/output/dense", "intermediate/dense", "output/dense")
SMOOTH_ALPHAS = (0.5, 0.8, 0.85, 0.9, 0.95)


def configurations(layers: int) -> dict[str, Any]:
    """Every configuration by name, as an ``Int8Config``."""
    from bertrt.export.quantize import KEEP_GROUPS, Int8Config
    from bertrt.export.tasks import export_spec

    # ``default``: the embedder's scheme (no smoothing); ``qa-export``: what the export builds for QA.
    configs: dict[str, Any] = {"default": Int8Config(), "qa-export": export_spec(Task.QA).int8}
    configs |= {f"keep-{group}": Int8Config(keep_fp32=("head", group)) for group in KEEP_GROUPS if group != "head"}
    configs["keep-ffn"] = Int8Config(keep_fp32=("head", "ffn-input", "ffn-output"))
    configs["per-tensor"] = Int8Config(per_channel=False)
    configs |= {f"smooth-{alpha}": Int8Config(smooth_alpha=alpha) for alpha in SMOOTH_ALPHAS}
    configs["smooth-auto"] = Int8Config(smooth_alpha="auto")
    configs["smooth-auto-keep-embeddings"] = Int8Config(keep_fp32=("head", "embeddings"), smooth_alpha="auto")
    configs["smooth-auto-keep-ffn-output"] = Int8Config(keep_fp32=("head", "ffn-output"), smooth_alpha="auto")
    for first in range(1, layers + 1):
        kept = tuple(f"/bert/encoder/layer.{i}/output/dense/MatMul" for i in range(first))
        configs[f"smooth-auto-keep-ffn-output-0-{first - 1}"] = Int8Config(nodes_to_exclude=kept, smooth_alpha="auto")
        configs[f"smooth-auto-keep-embeddings-ffn-output-0-{first - 1}"] = Int8Config(
            keep_fp32=("head", "embeddings"), nodes_to_exclude=kept, smooth_alpha="auto"
        )
        both = kept + tuple(f"/bert/encoder/layer.{i}/intermediate/dense/MatMul" for i in range(first))
        configs[f"smooth-auto-keep-embeddings-ffn-0-{first - 1}"] = Int8Config(
            keep_fp32=("head", "embeddings"), nodes_to_exclude=both, smooth_alpha="auto"
        )
    encoder = [f"Attention_{i}" for i in range(layers)]
    encoder += [f"/bert/encoder/layer.{i}/{part}/MatMul" for i in range(layers) for part in LAYER_NODES]
    for i in range(layers):
        mine = {f"Attention_{i}"} | {name for name in encoder if f"layer.{i}/" in name}
        configs[f"only-layer{i}"] = Int8Config(nodes_to_exclude=tuple(n for n in encoder if n not in mine))
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertrt.bench.int8_sensitivity", description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models/minilm"), help="bundle folder")
    parser.add_argument("--data", required=True, help="SQuAD v1.1 JSON the answers are compared on")
    parser.add_argument("--calibration", required=True, help="SQuAD v1.1 JSON whose first questions calibrate")
    parser.add_argument("--limit", type=int, default=400, help="questions compared")
    parser.add_argument(
        "--calibration-size", type=int, default=None, help="calibration questions (default: the export's 64)"
    )
    parser.add_argument("--config", action="append", help="configuration(s) to run; default: all")
    parser.add_argument("--out", type=Path, required=True, help="results JSON (runs are added to it)")
    args = parser.parse_args(argv)

    from bertrt.export.calibration import CALIBRATION_SIZE
    from bertrt.export.finetune import predict_answers
    from bertrt.export.quantize import calibration_feeds, quantize_int8
    from bertrt.export.revalidate import load_torch_model
    from bertrt.export.squad import load_squad, squad_scores
    from bertrt.export.variants import CALIBRATION_BATCH_SIZE

    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        shutil.copytree(args.models, bundle)
        qa_dir = bertrt.load(bundle).model_dir(Task.QA)
        manifest = ModelManifest.read(qa_dir)
        examples = load_squad(args.data, limit=args.limit)
        model, tokenizer = load_torch_model(qa_dir, Task.QA)
        layers = int(model.config.num_hidden_layers)
        reference = predict_answers(model, tokenizer, examples, manifest.max_length, manifest.doc_stride or 128)
        del model
        pytorch = squad_scores(reference, examples)
        size = args.calibration_size or CALIBRATION_SIZE
        pairs = [(e.question, e.context) for e in load_squad(args.calibration, limit=size)]
        feeds = calibration_feeds(qa_dir / "tokenizer.json", pairs, manifest.max_length, CALIBRATION_BATCH_SIZE)
        configs = configurations(layers)
        unknown = sorted(set(args.config or ()) - set(configs))
        if unknown:
            parser.error(f"unknown configuration(s) {unknown}; choose from {sorted(configs)}")
        results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {"runs": {}}
        results |= {"models": str(args.models), "data": args.data, "limit": len(examples), "command": sys.argv}
        results["pytorch"] = {"exact_match": pytorch["exact_match"], "f1": pytorch["f1"]}
        for name in args.config or list(configs):
            started = time.perf_counter()
            target = qa_dir / manifest.variants[Precision.INT8].file
            report = quantize_int8(qa_dir / manifest.variants[Precision.FP32].file, target, feeds, configs[name])
            _record_checksum(qa_dir, target)
            answers = _answers(bundle, examples)
            agreement = float(np.mean([answers[e.id] == reference[e.id] for e in examples]))
            scores = squad_scores(answers, examples)
            results["runs"][name] = {
                "answer_agreement": agreement,
                "exact_match": scores["exact_match"],
                "f1": scores["f1"],
                "kept_fp32": len(report["kept_fp32"]),
                "calibration_questions": len(pairs),
                "quantized_ops": report["quantized_ops"],
                **({"smoothing": report["smoothing"]} if "smoothing" in report else {}),
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(
                f"{name:<22} agreement {agreement:.1%}  F1 {scores['f1']:.2f} (PyTorch {results['pytorch']['f1']:.2f})"
                f"  kept fp32 {len(report['kept_fp32'])}",
                flush=True,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def _record_checksum(model_dir: Path, file: Path) -> None:
    """The copied bundle's manifest lists the rewritten file's sha256, so the runtime opens it."""
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["files"][file.name] = sha256_of(file)
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def _answers(bundle: Path, examples: list[Any]) -> dict[str, str]:
    """The int8 file's answer text per question id (empty where it gives none)."""
    runner = bertrt.load(bundle, device="cpu", precision="int8").qa
    answers = {}
    for begin in range(0, len(examples), 32):
        chunk = examples[begin : begin + 32]
        for example, result in zip(chunk, runner([e.question for e in chunk], [e.context for e in chunk]), strict=True):
            answers[example.id] = result.best.text if result.best else ""
    return answers


if __name__ == "__main__":
    sys.exit(main())
