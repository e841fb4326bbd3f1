"""The systems under test: one interface, the bertrt and plain ONNX Runtime implementations,
and a factory that imports the PyTorch-based baselines only when they are asked for.

A system serves whole requests the way its users would write them: ``classify`` (texts to
labels), ``embed`` (texts to mean-pooled sentence vectors), ``answer`` (question/context
pairs to answer texts) and, at the model level, ``forward`` (token arrays through the
model, for the scaling curves). Every system gets the same thread count and batch size.

Example::

    system = make_system("bertrt-fp32", bundle_models(path), SystemSettings(threads=2))
    system.classify(["I love Paris"])   # ['positive']
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from bertrt.bench.config import SENTENCE_TRANSFORMERS_SYSTEMS, TORCH_SYSTEMS, TWIN_SYSTEM
from bertrt.bench.subjects import ModelInfo
from tokenizers import Tokenizer

from bertrt.bundle import Bundle
from bertrt.errors import ConfigError
from bertrt.options import RuntimeOptions
from bertrt.types import Device, Pooling, Precision, Task

# Operations a system may support; the harness skips the others.
OPERATIONS = ("classify", "embed", "answer", "forward")


@dataclass(frozen=True)
class SystemSettings:
    """What every system is given alike: intra-op threads, batch size and device."""

    threads: int = 2
    batch_size: int = 32
    device: Device = Device.CPU


class System(ABC):
    """One way of serving the bundle's models. Subclasses load models on first use."""

    name: str
    operations: frozenset[str] = frozenset(OPERATIONS)

    def __init__(self, models: Mapping[Task, ModelInfo], settings: SystemSettings) -> None:
        self.models = models
        self.settings = settings

    def supports(self, operation: str) -> bool:
        """Whether this system can run ``operation`` (one of :data:`OPERATIONS`)."""
        return operation in self.operations

    @abstractmethod
    def classify(self, texts: Sequence[str]) -> list[str]:
        """The label of each text."""

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray | Sequence[np.ndarray]:
        """Mean-pooled sentence vectors, one per text, in the form the system hands them out:
        a ``(len(texts), hidden)`` array or a sequence of ``(hidden,)`` vectors. The harness
        stacks them after the timing, so no system pays for another's output form."""

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        """The best answer text for each question in its context."""
        raise NotImplementedError(f"{self.name} does not answer questions")

    def forward(self, task: Task, feeds: Mapping[str, np.ndarray]) -> None:
        """One model forward pass on token arrays (no tokenization, no post-processing)."""
        raise NotImplementedError(f"{self.name} has no model-level forward")

    @abstractmethod
    def close(self) -> None:
        """Release models and sessions once the run is over."""


class BertrtSystem(System):
    """bertrt itself at one precision: the public runners of :func:`bertrt.load`.

    ``batch_lanes`` is the runtime option (0, the default, is bertrt's own default); another
    value names the system ``bertrt-<precision>-lanes-<n>``, and 1, batches run in turn,
    ``bertrt-<precision>-in-turn``."""

    def __init__(
        self, models: Mapping[Task, ModelInfo], settings: SystemSettings, precision: Precision, batch_lanes: int = 0
    ) -> None:
        super().__init__(models, settings)
        suffix = {0: "", 1: "-in-turn"}.get(batch_lanes, f"-lanes-{batch_lanes}")
        self.name = f"bertrt-{precision.value}{suffix}"
        if (precision is Precision.FP16) == (settings.device is Device.CPU) and precision is not Precision.FP32:
            raise ConfigError(
                f"{self.name} is not timed on --device {settings.device.value}: fp16 files are for CUDA GPUs "
                "and int8 files for CPUs."
            )
        for info in models.values():
            info.onnx_file(precision)  # fail now, with the variants present, if one is missing
        path = next(iter(models.values())).directory.parent
        options = RuntimeOptions(
            intra_op_threads=settings.threads,
            inter_op_threads=1,
            batch_size=settings.batch_size,
            batch_lanes=batch_lanes,
        )
        self.bundle: Bundle | None = Bundle(path, device=settings.device, precision=precision, options=options)

    def _bundle(self) -> Bundle:
        if self.bundle is None:
            raise ConfigError(f"{self.name} was closed; create a new system to run it again.")
        return self.bundle

    def classify(self, texts: Sequence[str]) -> list[str]:
        return [r.label for r in self._bundle().classifier(list(texts))]

    def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        results = self._bundle().embedder(list(texts), pooling=Pooling.MEAN, token_embeddings=False)
        return [r.vector for r in results]

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
        results = self._bundle().qa(list(questions), list(contexts))
        return [r.best.text if r.best else "" for r in results]

    def forward(self, task: Task, feeds: Mapping[str, np.ndarray]) -> None:
        self._bundle().runner(task).session.run(feeds)

    def close(self) -> None:
        self.bundle = None


class PlainOrtSystem(System):
    """The code a user writes with ``onnxruntime`` alone: the fp32 file, ``session.run``
    without IO binding, the fast tokenizer, each batch padded to its longest member in
    arrival order. QA windowing is not something users get for free here, so no ``answer``.

    ``sessions`` gives ready sessions to run instead of opening the files: the overhead
    benchmark drives bertrt's own sessions this way, so the two systems share every byte of
    model memory and differ only in the code around ``run``."""

    name = "ort"
    operations = frozenset({"classify", "embed", "forward"})

    def __init__(
        self,
        models: Mapping[Task, ModelInfo],
        settings: SystemSettings,
        sessions: Mapping[Task, ort.InferenceSession] | None = None,
    ) -> None:
        super().__init__(models, settings)
        self._sessions = dict(sessions or {})
        self._loaded: dict[Task, tuple[ort.InferenceSession, Tokenizer]] = {}

    def _load(self, task: Task) -> tuple[ort.InferenceSession, Tokenizer]:
        if task not in self._loaded:
            info = self.models[task]
            session = self._sessions.get(task) or self._open(info)
            tokenizer = Tokenizer.from_file(str(info.directory / "tokenizer.json"))
            tokenizer.enable_truncation(info.max_length)
            tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0)
            self._loaded[task] = (session, tokenizer)
        return self._loaded[task]

    def _open(self, info: ModelInfo) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.settings.threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(
            str(info.onnx_file(Precision.FP32)), options, providers=ort_providers(self.settings.device)
        )

    def _batches(self, task: Task, texts: Sequence[str]) -> list[tuple[dict[str, np.ndarray], list[np.ndarray]]]:
        session, tokenizer = self._load(task)
        declared = {i.name for i in session.get_inputs()}
        runs = []
        for start in range(0, len(texts), self.settings.batch_size):
            encodings = tokenizer.encode_batch(list(texts[start : start + self.settings.batch_size]))
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            feeds = {k: v for k, v in feeds.items() if k in declared}
            runs.append((feeds, session.run(None, feeds)))
        return runs

    def classify(self, texts: Sequence[str]) -> list[str]:
        labels = self.models[Task.CLASSIFY].labels or ()
        return [labels[i] for _, (logits, *_) in self._batches(Task.CLASSIFY, texts) for i in logits.argmax(-1)]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.concatenate(
            [mean_pool(out[0], feeds["attention_mask"]) for feeds, out in self._batches(Task.EMBED, texts)]
        )

    def forward(self, task: Task, feeds: Mapping[str, np.ndarray]) -> None:
        session, _ = self._load(task)
        declared = {i.name for i in session.get_inputs()}
        session.run(None, {k: v for k, v in feeds.items() if k in declared})

    def close(self) -> None:
        self._loaded.clear()


class TwinOrtSystem(PlainOrtSystem):
    """:class:`PlainOrtSystem` under another name, with sessions of its own: the same calls
    on the same file, so how far it lands from ``ort`` is how far identical systems drift."""

    name = TWIN_SYSTEM


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mask-aware mean of ``(batch, seq, hidden)`` token vectors.

    >>> mean_pool(np.ones((1, 2, 3)), np.array([[1, 0]])).tolist()
    [[1.0, 1.0, 1.0]]
    """
    weights = mask[..., None].astype(hidden.dtype)
    pooled: np.ndarray = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    return pooled


def ort_providers(device: Device) -> list[str]:
    """ONNX Runtime providers for ``device`` (CUDA first, CPU as its fallback)."""
    if device is Device.CPU:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def make_system(name: str, models: Mapping[Task, ModelInfo], settings: SystemSettings) -> System:
    """The system called ``name``; ConfigError when its libraries are not installed and
    BundleError when the bundle lacks its variant (the harness skips it with that note)."""
    if name.startswith("bertrt-"):
        return BertrtSystem(models, settings, Precision(name.removeprefix("bertrt-")))
    if name == "ort":
        return PlainOrtSystem(models, settings)
    if name == TWIN_SYSTEM:
        return TwinOrtSystem(models, settings)
    if name in TORCH_SYSTEMS:
        try:
            from bertrt.bench import torch_systems
        except ImportError as exc:
            raise ConfigError(
                f"The {name} baseline needs {exc.name}, which is not installed; pip install 'bertrt[export]'."
            ) from exc
        return torch_systems.make(name, models, settings)
    if name in SENTENCE_TRANSFORMERS_SYSTEMS:
        try:
            from bertrt.bench import st_systems
        except ImportError as exc:
            raise ConfigError(
                f"The {name} baseline needs {exc.name}, which is not installed; "
                "pip install 'sentence-transformers[onnx]'."
            ) from exc
        return st_systems.make(name, models, settings)
    raise ConfigError(f"Unknown system {name!r}.")
