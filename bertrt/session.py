"""One ONNX Runtime session layer for every task: tensor maps, feeding and IO binding.

:class:`OrtSession` wraps an ``InferenceSession`` (built by :mod:`bertrt.providers`) and
owns the only IO-binding code path of the runtime. Inputs are fed only where the graph
declares them, cast to the graph's dtype. Then one of two paths runs:

* on the CPU provider, plain ``session.run``: ONNX Runtime reads the host arrays in place
  and hands its output tensors to NumPy without a copy, so there is nothing for IO binding
  to save. Measured on a MiniLM forward (one thread, alternating, thread CPU time):
  binding costs 0-2% more than ``run`` and adds a page-faulted copy of every output;
* on CUDA, IO binding: inputs are bound from host arrays (ONNX Runtime copies them to the
  device), each output to a pre-allocated device buffer whose shape is worked out from the
  inputs' symbolic axes (a flat ``OrtValue`` reused across calls, replaced by a larger one
  only when a larger batch x sequence arrives; the run writes into its prefix), and the
  results are copied to the host once (``copy_outputs_to_cpu``), so callers own them. An
  output whose shape cannot be derived from the inputs is bound to the device without a
  buffer and ONNX Runtime allocates it.

``RuntimeOptions(io_binding=True)`` or ``False`` forces either path on any provider.
Which runs hand the CPU memory arena back is :class:`bertrt.memory.ArenaPolicy`'s call.

**Row chunks on the CPU.** A forward of more than ``RuntimeOptions.cpu_chunk_tokens``
tokens (1,024 by default) runs as consecutive slices of rows, each at most that many
tokens, on all threads, and the outputs are joined. A whole large batch's attention scores
and FFN activations (25 MB each at 32 x 128 on MiniLM) outgrow the caches, so every
memory-bound node streams them from DRAM; a chunk's stay in cache. The graph computes
each row on its own (attention never crosses rows), so the outputs are the same, bit for
bit on the MiniLM files; what changes is the time (on a 2-core Zen 4, 64 x 128 and
32 x 256 fp32 forwards 1.07x as fast, W2 texts and W3 questions 1.07-1.13x in fp32 and
int8: ``python -m bertrt.bench.chunking``, benchmarks/README.md) and the arena,
which holds one chunk's working set instead of the whole batch's. For the arena policy a cut
call is still one large run: an isolated one hands the arena back when its last chunk ends.
Rows longer than :data:`LONGEST_ROW_TO_CUT` run whole, and so do graphs whose inputs do not
all start with one symbolic batch axis, calls asking for an output that does not, and every
run on CUDA.

Thread safety: ``InferenceSession.run`` and ``run_with_iobinding`` may be called from many
threads at once, but an ``IOBinding`` and the buffers bound to it may not be shared
between overlapping runs. Each thread therefore gets its own binding and buffers
(``threading.local``), created on its first call: no lock on the hot path, at the cost of
one set of output buffers per serving thread (they die with the thread).

Example::

    session = OrtSession(Path("model.onnx"), Device.CPU)
    outputs = session.run({"input_ids": ids, "attention_mask": mask})
    outputs["last_hidden_state"].shape  # (batch, seq, hidden)
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bertrt.errors import BundleError
from bertrt.memory import ArenaPolicy
from bertrt.options import RuntimeOptions
from bertrt.providers import CUDA_PROVIDER, create_session, run_options
from bertrt.types import Device, Precision

logger = logging.getLogger("bertrt")

# Rows longer than this are never cut into chunks. A 512-token row's own attention scores
# (12 heads x 512 x 512 floats, 12.6 MB) outgrow the caches whatever the chunk, so cutting
# only streams the weights once more per chunk: 8 x 512 MiniLM forwards ran 0.96-0.98x as
# fast cut, where W3's 384-token windows ran 1.11x (fp32) and 1.13x (int8) as fast
# (`python -m bertrt.bench.chunking`, benchmarks/README.md).
LONGEST_ROW_TO_CUT = 384

# ONNX Runtime's tensor type names -> NumPy dtypes (the ones BERT graphs use).
_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output as the session reports it (symbolic axes are str or None)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


class OrtSession:
    """An ONNX Runtime session with dtype-aware feeding, IO binding where it pays, and the
    CPU arena handed back by policy.

    ``inputs`` and ``outputs`` map names to :class:`TensorInfo`, built once at load.
    ``provider`` names the execution provider that runs the graph; ``precision`` is the
    file's variant (it sets the CUDA provider's options).
    """

    def __init__(
        self,
        model_path: Path,
        device: Device = Device.AUTO,
        options: RuntimeOptions | None = None,
        precision: Precision = Precision.FP32,
    ) -> None:
        self.options = options or RuntimeOptions()
        self._session = create_session(Path(model_path), device, self.options, precision)
        # Read-only after this point, so every thread's runs can share them.
        self._keep_options = run_options(shrink=self.options.cpu_arena == "shrink")
        self._shrink_options = run_options(shrink=True)
        self.provider: str = self._session.get_providers()[0]
        self.inputs = {t.name: _tensor_info(t) for t in self._session.get_inputs()}
        self.outputs = {t.name: _tensor_info(t) for t in self._session.get_outputs()}
        self._output_names = list(self.outputs)
        self._axis_sources = _axis_sources(self.inputs)
        batch_axis = _batch_axis(self.inputs)
        # Outputs that can be joined from row chunks: those whose first axis is the batch.
        self._row_outputs = frozenset(
            name for name, info in self.outputs.items() if batch_axis is not None and info.shape[:1] == (batch_axis,)
        )
        on_cuda = self.provider == CUDA_PROVIDER
        self._device_type = "cuda" if on_cuda else "cpu"
        self._device_id = self.options.cuda_device_id if on_cuda else 0
        self._io_binding = on_cuda if self.options.io_binding is None else self.options.io_binding
        self.arena_policy = ArenaPolicy(self._shrink_arena) if self.options.cpu_arena == "adaptive" else None
        self.chunk_tokens = 0 if on_cuda or not self._row_outputs else self.options.cpu_chunk_tokens
        self._local = threading.local()

    @property
    def intra_op_threads(self) -> int:
        """The intra-op threads ONNX Runtime runs this graph with, as the session reports
        them (0: its own default, one per physical core)."""
        threads: int = self._session.get_session_options().intra_op_num_threads
        return threads

    @property
    def inference_session(self) -> ort.InferenceSession:
        """The ONNX Runtime session underneath, for callers that time or drive it directly
        (the overhead benchmark runs a plain ``session.run`` loop on this very session)."""
        return self._session

    @property
    def io_binding(self) -> bool:
        """Whether runs go through IO binding (on CUDA, unless options say otherwise) or plain
        ``session.run`` (on the CPU)."""
        return self._io_binding

    def run(self, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph on host arrays; returns the ``outputs`` named (every output by
        default) as host arrays the caller owns.

        Feeds the graph does not declare are ignored; a declared input that is missing
        raises BundleError (the graph and the runtime disagree).
        """
        inputs = self._prepare(feeds)
        names = self._output_names if outputs is None else outputs
        rows = self.chunk_rows(inputs, names)
        if not rows:
            return self._run_once(inputs, names)
        batch = next(iter(inputs.values())).shape[0]
        # Row slices of C-contiguous inputs are views: nothing is copied going in.
        chunks = [
            {name: array[start : start + rows] for name, array in inputs.items()} for start in range(0, batch, rows)
        ]
        results = self._run_cut(chunks, names, _tokens(inputs))
        return {name: np.concatenate([result[name] for result in results]) for name in names}

    def chunk_rows(self, inputs: Mapping[str, np.ndarray], names: list[str] | None = None) -> int:
        """Rows per chunk for a run of ``inputs`` (prepared feeds) asking for ``names``; 0
        where it runs whole: few enough tokens, one row, rows longer than
        :data:`LONGEST_ROW_TO_CUT`, chunking off or on CUDA, or an output asked for that is
        not batch-major."""
        if not self.chunk_tokens or not inputs:
            return 0
        first = next(iter(inputs.values()))
        batch = first.shape[0] if first.ndim else 0
        if batch < 2 or first.size <= self.chunk_tokens:
            return 0
        if not self._row_outputs.issuperset(self._output_names if names is None else names):
            return 0
        row_tokens = first.size // batch
        if row_tokens > LONGEST_ROW_TO_CUT:
            return 0
        rows = max(1, self.chunk_tokens // row_tokens)
        return rows if rows < batch else 0

    def _run_once(self, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """One ``session.run`` of ``inputs``, the arena handed back or kept by policy."""
        policy = self.arena_policy
        tokens = _tokens(inputs)
        if policy is None or policy.settled(tokens):
            return self._run(inputs, names, self._keep_options)
        shrink = policy.before_run(tokens)
        try:
            return self._run(inputs, names, self._shrink_options if shrink else self._keep_options)
        finally:
            policy.after_run()

    def _run_cut(
        self, chunks: list[dict[str, np.ndarray]], names: list[str], tokens: int
    ) -> list[dict[str, np.ndarray]]:
        """The ``chunks`` of one call in turn, as one run of ``tokens`` tokens for the arena
        policy: the chunks share the arena, and only the last may hand it back. A call cut in
        chunks then leaves memory as its whole batch would (an isolated large call hands the
        arena back, a stream of them keeps it), where chunks counted as small runs would each
        keep what they took: the soak's resident memory grew 6.4% so."""
        policy = self.arena_policy
        if policy is None:
            return [self._run(chunk, names, self._keep_options) for chunk in chunks]
        shrink = policy.before_run(tokens)
        try:
            results = [self._run(chunk, names, self._keep_options) for chunk in chunks[:-1]]
            results.append(self._run(chunks[-1], names, self._shrink_options if shrink else self._keep_options))
            return results
        finally:
            policy.after_run()

    def _run(self, inputs: dict[str, np.ndarray], names: list[str], options: ort.RunOptions) -> dict[str, np.ndarray]:
        if self._io_binding:
            return self._run_bound(inputs, names, options)
        return dict(zip(names, self._session.run(names, inputs, options), strict=True))

    def _shrink_arena(self) -> None:
        """Hand the arena's free regions back with the smallest run the graph takes (the
        run option acts only at the end of a run); called by the arena policy when idle."""
        feeds = {
            name: np.zeros([dim if isinstance(dim, int) else 1 for dim in info.shape], dtype=info.dtype)
            for name, info in self.inputs.items()
        }
        try:
            self._session.run(self._output_names[:1], feeds, self._shrink_options)
        except Exception as exc:  # the model may refuse a 1-token input: memory stays held
            logger.debug("The idle arena shrink did not run: %s", exc)

    def _prepare(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        prepared = {}
        for name, info in self.inputs.items():
            if name not in feeds:
                raise BundleError(
                    f"The model expects an input named {name!r} that bertrt does not provide "
                    f"(it feeds {', '.join(sorted(feeds))}); re-export it with `bertrt export`."
                )
            prepared[name] = np.ascontiguousarray(feeds[name], dtype=info.dtype)
        return prepared

    def _run_bound(
        self, inputs: dict[str, np.ndarray], names: list[str], options: ort.RunOptions
    ) -> dict[str, np.ndarray]:
        state = self._thread_state()
        binding = state.binding
        # Cleared each call so copy_outputs_to_cpu returns outputs in the order of `names`.
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in inputs.items():
            binding.bind_cpu_input(name, array)
        for name in names:
            info = self.outputs[name]
            shape = self._output_shape(info, inputs)
            if shape is None:
                binding.bind_output(name, self._device_type, self._device_id)
                continue
            buffer = state.buffer(name, info.dtype, math.prod(shape))
            binding.bind_output(
                name, self._device_type, self._device_id, info.dtype, shape, buffer.data_ptr()
            )
        self._session.run_with_iobinding(binding, options)
        arrays = binding.copy_outputs_to_cpu()
        # `inputs` stays referenced until here: bound host arrays must outlive the run.
        binding.clear_binding_inputs()
        return dict(zip(names, arrays, strict=True))

    def _output_shape(self, info: TensorInfo, inputs: Mapping[str, np.ndarray]) -> tuple[int, ...] | None:
        """The concrete output shape for these inputs, or None where an axis is unknown."""
        shape = []
        for dim in info.shape:
            if isinstance(dim, int):
                shape.append(dim)
            elif dim in self._axis_sources:
                input_name, axis = self._axis_sources[dim]
                shape.append(inputs[input_name].shape[axis])
            else:
                return None
        return tuple(shape)

    def _thread_state(self) -> _BoundBuffers:
        state: _BoundBuffers | None = getattr(self._local, "state", None)
        if state is None:
            state = _BoundBuffers(self._session.io_binding(), self._device_type, self._device_id)
            self._local.state = state
        return state

    def buffer_capacity(self) -> dict[str, int]:
        """Elements allocated per output buffer for the calling thread (0 before its first run)."""
        state: _BoundBuffers | None = getattr(self._local, "state", None)
        return {} if state is None else {n: v.shape()[0] for n, v in state.values.items()}


class _BoundBuffers:
    """One thread's IOBinding and its flat output buffers on the session's device."""

    def __init__(self, binding: ort.IOBinding, device_type: str, device_id: int) -> None:
        self.binding = binding
        self.device_type = device_type
        self.device_id = device_id
        self.values: dict[str, ort.OrtValue] = {}

    def buffer(self, name: str, dtype: np.dtype, elements: int) -> ort.OrtValue:
        """A buffer of at least ``elements``; grown (never shrunk) to exactly the need, which
        is rare because batches arrive longest first (see bertrt.batching)."""
        current = self.values.get(name)
        if current is None or current.shape()[0] < elements:
            current = ort.OrtValue.ortvalue_from_shape_and_type(
                [max(elements, 1)], dtype, self.device_type, self.device_id
            )
            self.values[name] = current
        return current


def _tokens(inputs: Mapping[str, np.ndarray]) -> int:
    """A run's size for the arena policy: the elements of its first input (batch x sequence)."""
    for array in inputs.values():
        return int(array.size)
    return 0


def _batch_axis(inputs: Mapping[str, TensorInfo]) -> str | None:
    """The symbolic axis every input starts with (the batch), or None where they do not
    share one: such a graph is never cut into row chunks."""
    firsts = {info.shape[0] if info.shape else None for info in inputs.values()}
    if len(firsts) != 1:
        return None
    axis = firsts.pop()
    return axis if isinstance(axis, str) else None


def _tensor_info(node: ort.NodeArg) -> TensorInfo:
    if node.type not in _NUMPY_TYPES:
        raise BundleError(
            f"Graph tensor {node.name!r} has type {node.type}, which bertrt does not serve; "
            "re-export the model with `bertrt export`."
        )
    return TensorInfo(node.name, np.dtype(_NUMPY_TYPES[node.type]), tuple(node.shape))


def _axis_sources(inputs: Mapping[str, TensorInfo]) -> dict[str, tuple[str, int]]:
    """Symbolic axis name -> (input, axis) where its size can be read at run time."""
    sources: dict[str, tuple[str, int]] = {}
    for info in inputs.values():
        for axis, dim in enumerate(info.shape):
            if isinstance(dim, str) and dim not in sources:
                sources[dim] = (info.name, axis)
    return sources
