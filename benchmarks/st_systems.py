"""sentence-transformers, the embedder's peers: ``st-torch`` (its PyTorch backend),
``st-onnx`` (``backend="onnx"``, its own ONNX export through optimum) and ``st-int8`` (its
``export_dynamic_quantized_onnx_model``, ORT's dynamic int8 for this CPU's instruction set).

Each is set up as its documentation shows, offline, from the bundle's embedder: its
``pytorch/`` weights and tokenizer become a sentence-transformers model folder (Transformer,
mean Pooling, Normalize: the module stack of all-MiniLM-L6-v2) in a temporary directory,
which the ONNX export and the int8 file are written into. ``encode`` sorts texts by length
and batches them itself, like bertrt. Importing this module imports torch and
sentence-transformers; :func:`bertrt.bench.systems.make_system` imports it only on request.

Example::

    system = make("st-int8", bundle_models(path), SystemSettings(threads=2))
    system.embed(["I love Paris"]).shape   # (1, 384), unit length
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bertrt.bench.machine import cpu_features
from bertrt.bench.subjects import ModelInfo
from bertrt.bench.systems import System, SystemSettings
from sentence_transformers import SentenceTransformer
from sentence_transformers import models as modules

from bertrt.errors import ConfigError
from bertrt.types import Device, Task

# The file suffix and path the int8 file is written under, named here: sentence-transformers'
# own name follows the preset's weight type (`qint8` for AVX-512, `quint8` for AVX2 and ARM).
INT8_SUFFIX = "dynamic_{preset}"
INT8_FILE = "onnx/model_" + INT8_SUFFIX + ".onnx"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class SentenceTransformerSystem(System):
    """One sentence-transformers backend on the bundle's embedder (``embed`` only)."""

    operations = frozenset({"embed"})

    def __init__(self, models: Mapping[Task, ModelInfo], settings: SystemSettings, backend: str) -> None:
        super().__init__(models, settings)
        if Task.EMBED not in models:
            raise ConfigError("The sentence-transformers systems embed, and this bundle has no embedder.")
        if backend == "int8" and settings.device is not Device.CPU:
            raise ConfigError("st-int8 is not timed on a GPU: its dynamic int8 file is for CPUs.")
        self.name = f"st-{backend}"
        self.backend = backend
        self._folder: Path | None = None
        self._model: Any = None

    def model(self) -> Any:
        """The SentenceTransformer, built (and for ONNX, exported) on first use."""
        if self._model is None:
            self._folder = Path(tempfile.mkdtemp(prefix="bertrt-st-"))
            self._model = self._load(write_model_folder(self.models[Task.EMBED], self._folder / "model"))
        return self._model

    def _load(self, folder: Path) -> Any:
        device = "cpu" if self.settings.device is Device.CPU else "cuda"
        if self.backend == "torch":
            torch.set_num_threads(self.settings.threads)
            return SentenceTransformer(str(folder), device=device, local_files_only=True)
        options = {"provider": _provider(self.settings.device), "session_options": _session_options(self.settings)}
        model = SentenceTransformer(
            str(folder), backend="onnx", device=device, model_kwargs=options, local_files_only=True
        )
        if self.backend == "onnx":
            return model
        from sentence_transformers.backend import export_dynamic_quantized_onnx_model

        preset = int8_preset()
        export_dynamic_quantized_onnx_model(model, preset, str(folder), file_suffix=INT8_SUFFIX.format(preset=preset))
        options["file_name"] = INT8_FILE.format(preset=preset)
        return SentenceTransformer(
            str(folder), backend="onnx", device=device, model_kwargs=options, local_files_only=True
        )

    def classify(self, texts: Sequence[str]) -> list[str]:
        raise NotImplementedError(f"{self.name} only embeds")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors: np.ndarray = self.model().encode(
            list(texts), batch_size=self.settings.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors

    def close(self) -> None:
        self._model = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def write_model_folder(embedder: ModelInfo, folder: Path) -> Path:
    """A sentence-transformers model folder at ``folder``: the embedder's PyTorch weights and
    tokenizer under a Transformer, mean Pooling and Normalize stack, at the bundle's length."""
    source = folder.parent / "source"
    source.mkdir(parents=True)
    for path in embedder.torch_dir.iterdir():
        (source / path.name).symlink_to(path.resolve())
    for name in _TOKENIZER_FILES:
        if (embedder.directory / name).is_file():
            (source / name).symlink_to((embedder.directory / name).resolve())
    word = modules.Transformer(str(source), max_seq_length=embedder.max_length)
    pooling = modules.Pooling(word.auto_model.config.hidden_size, pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling, modules.Normalize()], device="cpu").save(str(folder))
    return folder


def int8_preset() -> str:
    """sentence-transformers' quantization preset for this CPU, the one its docs pick."""
    features = set(cpu_features())
    if "avx512_vnni" in features:
        return "avx512_vnni"
    if "avx512f" in features:
        return "avx512"
    if "asimd" in features:
        return "arm64"
    return "avx2"


def make(name: str, models: Mapping[Task, ModelInfo], settings: SystemSettings) -> System:
    """The sentence-transformers system called ``name`` (``st-torch``, ``st-onnx``, ``st-int8``)."""
    return SentenceTransformerSystem(models, settings, name.removeprefix("st-"))


def _provider(device: Device) -> str:
    return "CPUExecutionProvider" if device is Device.CPU else "CUDAExecutionProvider"


def _session_options(settings: SystemSettings) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    return options
