"""Child process of the footprint measurement: load all three models one way, serve W1, and
print peak RSS as JSON. Only the stack under test is imported, so the figure is that
stack's own.

Run by :mod:`bertrt.bench.footprint`; by hand::

    echo '{"bundle": "models/minilm", "threads": 2, "texts": ["I love Paris"],
           "question": "Where?", "context": "In Paris."}' | python benchmarks/footprint_child.py bertrt-fp32
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

# Bundle folders of the three models (as bertrt export writes them) and their pipelines.
FOLDERS = {"embedder": "feature-extraction", "classifier": "text-classification", "qa": "question-answering"}


def serve_bertrt(request: dict[str, Any]) -> dict[str, Any]:
    """Load the bundle's ``precision`` variants with bertrt, serve every W1 request once per task."""
    start = time.perf_counter()
    import bertrt

    import_s = time.perf_counter() - start
    options = bertrt.RuntimeOptions(intra_op_threads=request["threads"])
    bundle = bertrt.load(request["bundle"], device="cpu", precision=request["precision"], options=options).load_all()
    for text in request["texts"]:
        bundle.classifier(text)
        bundle.embedder(text, pooling="mean")
    bundle.qa.answer(request["question"], request["context"])
    return {"import_s": import_s}


def serve_torch(request: dict[str, Any]) -> dict[str, Any]:
    """Load the same three models with ``transformers`` pipelines, serve the same requests."""
    start = time.perf_counter()
    import torch
    import transformers

    import_s = time.perf_counter() - start
    torch.set_num_threads(request["threads"])
    transformers.logging.set_verbosity_error()
    pipes = {}
    for folder, task in FOLDERS.items():
        model_dir = f"{request['bundle']}/{folder}"
        model_class = {
            "feature-extraction": transformers.AutoModel,
            "text-classification": transformers.AutoModelForSequenceClassification,
            "question-answering": transformers.AutoModelForQuestionAnswering,
        }[task]
        model = model_class.from_pretrained(f"{model_dir}/pytorch", use_safetensors=True).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        pipes[task] = transformers.pipeline(task, model=model, tokenizer=tokenizer, device="cpu")
    for text in request["texts"]:
        pipes["text-classification"](text)
        pipes["feature-extraction"](text)
    pipes["question-answering"](question=request["question"], context=request["context"])
    return {"import_s": import_s}


def main() -> None:
    """``python footprint_child.py bertrt-fp32|bertrt-int8|torch`` with the
    request on stdin."""
    stack = sys.argv[1]
    request = json.loads(sys.stdin.read())
    if stack.startswith("bertrt-"):
        report = serve_bertrt({**request, "precision": stack.removeprefix("bertrt-")})
    else:
        report = serve_torch(request)
    report["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(report))


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    Linux's ``ru_maxrss`` survives ``exec``, so a child started from a big parent reports
    the parent's size; ``VmHWM`` in ``/proc/self/status`` belongs to this image alone.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    # Elsewhere ru_maxrss is the best there is (KiB on Linux, bytes on macOS).
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


if __name__ == "__main__":
    main()
