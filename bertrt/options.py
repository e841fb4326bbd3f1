"""Runtime tunables: one dataclass, validated at construction, with a few named presets.

Example::

    from bertrt import RuntimeOptions
    options = RuntimeOptions(intra_op_threads=2, batch_size=16)
    plain_run = RuntimeOptions.preset("compare")  # IO binding off, for A/B timings
    service = RuntimeOptions(max_texts_per_call=256, max_chars_per_text=20_000)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from bertrt.errors import ConfigError

E = TypeVar("E", bound=Enum)

# ONNX Runtime's own names for its graph optimization levels, keyed by ours.
GRAPH_OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")
# What happens to ONNX Runtime's CPU memory arena (see bertrt.memory).
CPU_ARENA_MODES = ("adaptive", "shrink", "keep", "off")
# Tokens per CPU forward beyond which a batch is cut into row chunks (bertrt.session). On
# MiniLM, 1,024-token chunks ran 64 x 128 and 32 x 256 fp32 forwards 1.07x as fast as whole
# batches, where 512 and 2,048 were no better (`python -m bertrt.bench.chunking`,
# benchmarks/README.md).
CPU_CHUNK_TOKENS = 1024
# The request limits, by field name (all positive integers).
LIMITS = ("max_texts_per_call", "max_chars_per_text", "max_context_chars", "max_top_k")


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are built and how requests are batched.

    ``graph_optimization`` is one of ``disabled|basic|extended|all``; thread counts of 0
    let ONNX Runtime pick (one intra-op thread per physical core). ``io_binding`` None (the
    default) binds device buffers on CUDA and runs plain ``session.run`` on the CPU, where
    binding saves nothing (see :mod:`bertrt.session`); True or False forces either path, for
    comparison. ``batch_size``
    caps the texts (or QA windows) per forward pass; ``group_by_length`` sorts a request
    by token length before cutting it into batches so short texts are not padded to
    long ones (results still come back in the caller's order).

    ``cpu_arena`` says what becomes of ONNX Runtime's CPU memory arena (see
    :mod:`bertrt.memory`): ``adaptive`` (the default) keeps it across small runs and
    streams of large ones, and hands it back to the operating system after an isolated
    large run, when traffic turns small after large runs, and after a second without runs,
    so resident memory stays flat in a long-running service at no cost to steady work;
    ``shrink`` hands it back after every run (every run maps its working set afresh);
    ``keep`` holds every peak for reuse (the process keeps its largest request's memory);
    ``off`` allocates every tensor afresh (slowest).

    ``cpu_chunk_tokens`` cuts a CPU forward of more tokens (batch x sequence) than this into
    row chunks of at most that many tokens, run one after the other on all threads, and
    joins their outputs (see :mod:`bertrt.session`): a large batch's activations then fit
    in the CPU's caches, and the arena holds one chunk's working set, not the batch's. The
    results are the same (each row is computed alone either way); 0 never cuts. Rows of
    more than 384 tokens, and every run on CUDA, run whole.

    ``batch_lanes`` says how a CPU call with several batches runs them (see
    :mod:`bertrt.lanes`): 0 (the default, auto) runs a call with at least one batch per
    intra-op thread on as many single-threaded lanes, side by side, each lane's batches
    ``batch_size / lanes`` long (the same tokens in flight as one batch); 1 runs every
    batch in turn on all threads; ``n`` runs ``n`` lanes whenever a call has two batches or
    more.

    Request limits make an oversized call fail fast with an InputError instead of eating
    memory (see :mod:`bertrt.limits`): ``max_texts_per_call`` (texts, or QA pairs, per
    call), ``max_chars_per_text`` (characters of each text or question; longer texts are
    still only *read* up to the model window, so this bounds what a caller may send, not
    the work), ``max_context_chars`` (characters of each QA context, which is read whole,
    window after window) and ``max_top_k`` (answers or labels asked for per input).
    """

    graph_optimization: str = "all"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    io_binding: bool | None = None
    batch_size: int = 32
    group_by_length: bool = True
    batch_lanes: int = 0
    cuda_device_id: int = 0
    cpu_arena: str = "adaptive"
    cpu_chunk_tokens: int = CPU_CHUNK_TOKENS
    max_texts_per_call: int = 10_000
    max_chars_per_text: int = 2_000_000
    max_context_chars: int = 100_000
    max_top_k: int = 100

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise ConfigError(
                f"graph_optimization must be one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}, "
                f"got {self.graph_optimization!r}."
            )
        if self.cpu_arena not in CPU_ARENA_MODES:
            raise ConfigError(f"cpu_arena must be one of {', '.join(CPU_ARENA_MODES)}, got {self.cpu_arena!r}.")
        for name in ("intra_op_threads", "inter_op_threads", "cuda_device_id", "batch_lanes", "cpu_chunk_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, got {getattr(self, name)}.")
        for name in ("batch_size", *LIMITS):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be 1 or more, got {getattr(self, name)}.")

    @classmethod
    def preset(cls, name: str) -> RuntimeOptions:
        """A named preset: ``default``, ``single-thread`` (one intra-op thread, for
        services that run many requests in parallel) or ``compare`` (IO binding off on
        every provider)."""
        presets = {
            "default": cls(),
            "single-thread": cls(intra_op_threads=1, inter_op_threads=1),
            "compare": cls(io_binding=False),
        }
        if name not in presets:
            raise ConfigError(f"Unknown preset {name!r}; choose one of {', '.join(presets)}.")
        return presets[name]


def coerce_enum(enum_type: type[E], value: E | str, what: str) -> E:
    """``value`` as a member of ``enum_type``, or a ConfigError listing the valid values.

    >>> from bertrt.types import Device
    >>> coerce_enum(Device, "cpu", "device")
    <Device.CPU: 'cpu'>
    """
    if isinstance(value, enum_type):
        return value  # already a member: skips Enum's own lookup, which runs in Python
    try:
        return enum_type(value)
    except ValueError:
        valid = ", ".join(str(member.value) for member in enum_type)
        raise ConfigError(f"Unknown {what} {value!r}; choose one of {valid}.") from None
