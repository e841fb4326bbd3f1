"""The baselines built on PyTorch: eager ``transformers`` models, ``transformers.pipeline``,
optimum's ``ORTModelFor*`` on the same ONNX file (model-only and through a pipeline), and
``torch-bf16``: the eager models under ``torch.autocast("cpu", dtype=torch.bfloat16)``, the
three lines that make PyTorch fast on CPUs with AMX or AVX-512 bf16.

Importing this module imports torch and transformers; :func:`bertrt.bench.systems.make_system`
imports it only when one of these baselines is requested.

"Model-only" systems tokenize each batch with the fast tokenizer (padding to the batch's
longest text, in arrival order) and call the model under ``torch.inference_mode()``: the
code a careful user writes. Pipeline systems call the pipeline as its documentation
shows, with the bundle's truncation length, QA window and stride, and the batch size.

Example::

    system = make("torch-pipeline", bundle_models(path), SystemSettings(threads=2))
    system.classify(["I love Paris"])
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import transformers
from bertrt.bench.machine import has_bf16_matmul
from bertrt.bench.subjects import ModelInfo
from bertrt.bench.systems import OPERATIONS, System, SystemSettings, mean_pool, ort_providers
from transformers import AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer

from bertrt.errors import ConfigError
from bertrt.types import Device, Precision, Task

PIPELINE_TASKS = {Task.EMBED: "feature-extraction", Task.CLASSIFY: "text-classification", Task.QA: "question-answering"}
TORCH_CLASSES = {
    Task.EMBED: AutoModel,
    Task.CLASSIFY: AutoModelForSequenceClassification,
    Task.QA: AutoModelForQuestionAnswering,
}
# bertrt's default longest answer, in tokens (the pipeline's own default is 15).
MAX_ANSWER_TOKENS = 30


class TorchModelSystem(System):
    """Eager PyTorch: ``AutoModelFor*`` from the bundle's ``pytorch/`` weights."""

    name = "torch"
    operations = frozenset({"classify", "embed", "forward"})

    def __init__(self, models: Mapping[Task, ModelInfo], settings: SystemSettings) -> None:
        super().__init__(models, settings)
        torch.set_num_threads(settings.threads)
        self.torch_device = "cpu" if settings.device is Device.CPU else "cuda"
        self._models: dict[Task, Any] = {}
        self._tokenizers: dict[Task, Any] = {}

    def load_model(self, task: Task) -> Any:
        """The model for ``task``, loaded on first use."""
        if task not in self._models:
            self._models[task] = self._create_model(task)
        return self._models[task]

    def _create_model(self, task: Task) -> Any:
        model = TORCH_CLASSES[task].from_pretrained(self.models[task].torch_dir, use_safetensors=True)
        return model.eval().to(self.torch_device)

    def tokenizer(self, task: Task) -> Any:
        """The bundle's tokenizer for ``task`` (a fast ``transformers`` tokenizer)."""
        if task not in self._tokenizers:
            self._tokenizers[task] = AutoTokenizer.from_pretrained(self.models[task].directory)
        return self._tokenizers[task]

    def _run(self, task: Task, texts: Sequence[str]) -> list[tuple[Any, Any]]:
        model, tokenizer = self.load_model(task), self.tokenizer(task)
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.settings.batch_size):
                batch = tokenizer(
                    list(texts[start : start + self.settings.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.models[task].max_length,
                    return_tensors="pt",
                ).to(self.torch_device)
                outputs.append((batch, model(**batch)))
        return outputs

    def classify(self, texts: Sequence[str]) -> list[str]:
        model = self.load_model(Task.CLASSIFY)
        return [
            model.config.id2label[int(i)] for _, out in self._run(Task.CLASSIFY, texts) for i in out.logits.argmax(-1)
        ]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.concatenate(
            [
                mean_pool(out.last_hidden_state.float().cpu().numpy(), batch["attention_mask"].cpu().numpy())
                for batch, out in self._run(Task.EMBED, texts)
            ]
        )

    def forward(self, task: Task, feeds: Mapping[str, np.ndarray]) -> None:
        model = self.load_model(task)
        with torch.inference_mode():
            model(**{k: torch.from_numpy(v).to(self.torch_device) for k, v in feeds.items()})

    def close(self) -> None:
        self._models.clear()
        self._tokenizers.clear()


class OptimumModelSystem(TorchModelSystem):
    """optimum's ``ORTModelFor*`` on the bundle's fp32 ONNX file, driven like a torch model."""

    name = "optimum"

    def _create_model(self, task: Task) -> Any:
        from optimum.onnxruntime import (
            ORTModelForFeatureExtraction,
            ORTModelForQuestionAnswering,
            ORTModelForSequenceClassification,
        )

        classes = {
            Task.EMBED: ORTModelForFeatureExtraction,
            Task.CLASSIFY: ORTModelForSequenceClassification,
            Task.QA: ORTModelForQuestionAnswering,
        }
        info = self.models[task]
        return classes[task].from_pretrained(
            info.directory,
            file_name=info.onnx_file(Precision.FP32).name,
            local_files_only=True,
            providers=ort_providers(self.settings.device),
            session_options=_session_options(self.settings.threads),
        )


class TorchPipelineSystem(TorchModelSystem):
    """``transformers.pipeline`` over the eager models: what most users actually call."""

    name = "torch-pipeline"
    operations = frozenset({"classify", "embed", "answer"})

    def __init__(self, models: Mapping[Task, ModelInfo], settings: SystemSettings) -> None:
        super().__init__(models, settings)
        self._pipelines: dict[Task, Any] = {}

    def pipeline(self, task: Task) -> Any:
        """The pipeline for ``task``, built on first use."""
        if task not in self._pipelines:
            self._pipelines[task] = self._create_pipeline(task)
        return self._pipelines[task]

    def _create_pipeline(self, task: Task) -> Any:
        transformers.logging.set_verbosity_error()  # no "Device set to use cpu" per pipeline
        return transformers.pipeline(
            PIPELINE_TASKS[task], model=self.load_model(task), tokenizer=self.tokenizer(task), device=self.torch_device
        )

    def classify(self, texts: Sequence[str]) -> list[str]:
        pipe = self.pipeline(Task.CLASSIFY)
        options = dict(truncation=True, max_length=self.models[Task.CLASSIFY].max_length)
        if len(texts) == 1:  # a single request, as a service handles it
            return [pipe(texts[0], **options)[0]["label"]]
        return [r["label"] for r in pipe(list(texts), batch_size=self.settings.batch_size, **options)]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        # The pipeline hands back token vectors without the attention mask, padding rows
        # included in batches; pooling over what it returns is what its users can do.
        pipe = self.pipeline(Task.EMBED)
        options = dict(
            return_tensors=True, tokenize_kwargs=dict(truncation=True, max_length=self.models[Task.EMBED].max_length)
        )
        if len(texts) == 1:
            hidden = [pipe(texts[0], **options)]
        else:
            hidden = pipe(list(texts), batch_size=self.settings.batch_size, **options)
        return np.stack([h[0].float().mean(dim=0).cpu().numpy() for h in hidden])

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        info, pipe = self.models[Task.QA], self.pipeline(Task.QA)
        with warnings.catch_warnings():
            # The QA pipeline's post-processing trips a NumPy 2 deprecation on every call.
            warnings.simplefilter("ignore", DeprecationWarning)
            results = pipe(
                question=list(questions),
                context=list(contexts),
                batch_size=self.settings.batch_size,
                max_seq_len=info.max_length,
                doc_stride=info.doc_stride,
                max_answer_len=MAX_ANSWER_TOKENS,
            )
        if isinstance(results, dict):  # one question comes back unwrapped
            results = [results]
        return [r["answer"] for r in results]

    def close(self) -> None:
        self._pipelines.clear()
        super().close()


class OptimumPipelineSystem(TorchPipelineSystem):
    """optimum's pipeline over ``ORTModelFor*`` on the bundle's fp32 ONNX file."""

    name = "optimum-pipeline"
    _create_model = OptimumModelSystem._create_model

    def _create_pipeline(self, task: Task) -> Any:
        from optimum.onnxruntime import pipeline

        transformers.logging.set_verbosity_error()
        return pipeline(PIPELINE_TASKS[task], model=self.load_model(task), tokenizer=self.tokenizer(task))


class TorchBf16System(TorchPipelineSystem):
    """Eager PyTorch under bf16 autocast: the model-only path for labels, vectors and
    forwards, the QA pipeline for answers. Timed on CPUs with bf16 matrix instructions only."""

    name = "torch-bf16"
    operations = frozenset(OPERATIONS)

    def __init__(self, models: Mapping[Task, ModelInfo], settings: SystemSettings) -> None:
        if settings.device is not Device.CPU:
            raise ConfigError("torch-bf16 is the CPU autocast baseline; it is not timed on --device cuda.")
        if not has_bf16_matmul():
            raise ConfigError(
                "torch-bf16 needs a CPU with AMX or AVX-512 bf16 (amx_bf16, avx512_bf16); this one has neither."
            )
        super().__init__(models, settings)

    def classify(self, texts: Sequence[str]) -> list[str]:
        with _bf16():
            return TorchModelSystem.classify(self, texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with _bf16():
            return TorchModelSystem.embed(self, texts)

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        with _bf16():
            return super().answer(questions, contexts)

    def forward(self, task: Task, feeds: Mapping[str, np.ndarray]) -> None:
        with _bf16():
            TorchModelSystem.forward(self, task, feeds)


def _bf16() -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def make(name: str, models: Mapping[Task, ModelInfo], settings: SystemSettings) -> System:
    """The PyTorch-based baseline called ``name``."""
    classes: dict[str, type[TorchModelSystem]] = {
        c.name: c
        for c in (TorchModelSystem, TorchPipelineSystem, OptimumModelSystem, OptimumPipelineSystem, TorchBf16System)
    }
    return classes[name](models, settings)


def _session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options
