"""Execution-provider choice: which ONNX Runtime provider a session runs on, and why.

``onnxruntime-gpu`` lists ``CUDAExecutionProvider`` as *available* even on a machine
without a GPU or without the CUDA libraries, so availability proves nothing: the only
reliable test is to create a session with the CUDA provider and read back
``session.get_providers()``. :func:`cuda_failure` is that probe, the only one in bertrt
(sessions, and the export stage's choice of where to validate, ask it). It runs once per
process, quietly (ONNX Runtime's error spew and ``preload_dlls``' prints are suppressed), on
a one-node graph, and its verdict is remembered, so later sessions neither retry nor repeat
the noise. One log line on the ``bertrt`` logger says which provider runs and why.

Example::

    session = create_session(Path("models/minilm/embedder/model.onnx"), Device.AUTO, RuntimeOptions())
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from bertrt.errors import BundleError, DeviceError
from bertrt.memory import pin_mmap_threshold
from bertrt.options import RuntimeOptions
from bertrt.types import Device, Precision

logger = logging.getLogger("bertrt")

CPU_PROVIDER = "CPUExecutionProvider"
# The run option that hands the named arenas' free regions back when a run ends.
ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"
CUDA_PROVIDER = "CUDAExecutionProvider"

_GRAPH_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# ONNX Runtime's default logger severity (warning); restored after a quiet CUDA probe.
_ORT_DEFAULT_SEVERITY = 2
_ORT_FATAL_ONLY = 4

# What InferenceSession raises on a bad file: pybind classes that are not RuntimeErrors.
_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    ort_state.Fail,
    ort_state.InvalidProtobuf,
    ort_state.InvalidGraph,
    ort_state.InvalidArgument,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)

# The smallest graph a provider can run: y = Identity(x), x a float[1] (ONNX IR 8, opset 13),
# as onnx.helper serializes it (tests rebuild it to check). The CUDA probe creates a session on it.
_PROBE_GRAPH = bytes.fromhex(
    "08083a3b0a100a017812017922084964656e74697479120570726f62655a0f0a0178120a0a08080112040a020801"
    "620f0a0179120a0a08080112040a02080142040a00100d"
)

_probe_lock = threading.Lock()
_cuda_probed = False
_cuda_failure: str | None = None  # why CUDA cannot run in this process, once probed
_dlls_preloaded = False


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    """ONNX Runtime SessionOptions for ``options`` (optimization level, thread counts, CPU
    memory arena)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = _GRAPH_LEVELS[options.graph_optimization]
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.enable_cpu_mem_arena = options.cpu_arena != "off"
    if options.cpu_arena != "keep":
        # Without glibc's help, blocks handed back by the arena (or freed without one) stay in the heap.
        pin_mmap_threshold()
    return so


def run_options(shrink: bool) -> ort.RunOptions:
    """ONNX Runtime RunOptions for a run; with ``shrink`` the CPU arena's free regions are
    handed back to the system when the run ends (which runs do: :mod:`bertrt.memory`)."""
    ro = ort.RunOptions()
    if shrink:
        ro.add_run_config_entry(ARENA_SHRINKAGE, "cpu:0")
    return ro


def create_session(
    model_path: Path, device: Device, options: RuntimeOptions, precision: Precision = Precision.FP32
) -> ort.InferenceSession:
    """An InferenceSession for ``model_path`` on ``device``; logs the provider and the reason.

    ``cpu`` always uses the CPU provider; ``cuda`` raises DeviceError unless the CUDA
    provider really runs; ``auto`` takes CUDA where it runs and the CPU otherwise.
    ``precision`` is the file's variant; it sets the CUDA provider's options
    (:func:`cuda_provider_options`).
    """
    so = session_options(options)
    if device is Device.CPU:
        session = _new_session(model_path, so, [CPU_PROVIDER])
        reason = "--device cpu was asked for"
    else:
        session, failure = _try_cuda(model_path, so, cuda_provider_options(options.cuda_device_id, precision))
        if failure is None:
            reason = f"the CUDA provider loaded on GPU {options.cuda_device_id}"
        elif device is Device.CUDA:
            raise cuda_unavailable(failure)
        else:
            session = session or _new_session(model_path, so, [CPU_PROVIDER])
            reason = f"--device auto fell back to the CPU because {failure}"
    logger.info("%s runs on %s: %s.", _label(model_path), session.get_providers()[0], reason)
    return session


def cuda_provider_options(device_id: int, precision: Precision) -> dict[str, str]:
    """The CUDA provider's options for a session of a ``precision`` file on GPU ``device_id``.

    ONNX Runtime lets cuBLAS round fp32 matrix products to TF32 (10-bit mantissas) on Ampere
    and newer GPUs unless ``use_tf32`` is 0, which puts fp32 outputs about 1e-3 from
    PyTorch's (whose own default is full fp32), ten times the fp32 tolerance. So every file
    but fp16 runs with TF32 off; fp16 files keep ONNX Runtime's default, since their
    products are fp16 anyway.

    >>> cuda_provider_options(0, Precision.FP32)
    {'device_id': '0', 'use_tf32': '0'}
    >>> cuda_provider_options(1, Precision.FP16)
    {'device_id': '1'}
    """
    options = {"device_id": str(device_id)}
    if precision is not Precision.FP16:
        options["use_tf32"] = "0"
    return options


def cuda_failure() -> str | None:
    """Why the CUDA provider cannot run in this process, or None when it runs.

    Probed once per process, on a one-node graph, and remembered. Example::

        failure = cuda_failure()   # e.g. 'the CUDA provider did not start (no GPU, ...)'
    """
    global _cuda_probed, _cuda_failure
    with _probe_lock:
        if not _cuda_probed:
            _cuda_failure = _probe_cuda()
            _cuda_probed = True
        return _cuda_failure


def cuda_unavailable(failure: str) -> DeviceError:
    """The error for ``--device cuda`` where CUDA cannot run; ``failure`` says why."""
    return DeviceError(
        f"--device cuda was asked for but {failure}; use --device auto or cpu, "
        "or install onnxruntime-gpu with CUDA and cuDNN on a GPU machine."
    )


def _probe_cuda() -> str | None:
    if CUDA_PROVIDER not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
    dll_notes = _preload_cuda_dlls()
    so = ort.SessionOptions()
    with _quiet_ort():
        try:
            session = ort.InferenceSession(_PROBE_GRAPH, sess_options=so, providers=[CUDA_PROVIDER, CPU_PROVIDER])
            runs = CUDA_PROVIDER in session.get_providers()
        except _LOAD_ERRORS:
            runs = False
    if runs:
        return None
    detail = f" ({dll_notes})" if dll_notes else " (no GPU, or CUDA/cuDNN libraries missing)"
    return f"the CUDA provider did not start{detail}"


def _try_cuda(
    model_path: Path, so: ort.SessionOptions, cuda_options: dict[str, str]
) -> tuple[ort.InferenceSession | None, str | None]:
    """(session, None) when CUDA runs the model; (a CPU session or None, the reason) when not."""
    failure = cuda_failure()
    if failure is not None:
        return None, failure
    providers: list[str | tuple[str, dict[str, str]]] = [(CUDA_PROVIDER, cuda_options), CPU_PROVIDER]
    with _quiet_ort():
        session = _new_session(model_path, so, providers)
    if CUDA_PROVIDER in session.get_providers():
        return session, None
    return session, f"the CUDA provider did not start on GPU {cuda_options['device_id']}"


class _quiet_ort:
    """Silence ONNX Runtime's process-wide default logger (all but fatal errors) while a CUDA
    session is tried: a failed attempt logs pages that say nothing to a bertrt user."""

    def __enter__(self) -> None:
        ort.set_default_logger_severity(_ORT_FATAL_ONLY)

    def __exit__(self, *exc: object) -> None:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


def _preload_cuda_dlls() -> str:
    """Load CUDA/cuDNN from the NVIDIA pip packages where ORT offers it; returns the first
    complaint it printed (it prints to stdout, which would corrupt ``--json`` output)."""
    global _dlls_preloaded
    if _dlls_preloaded or not hasattr(ort, "preload_dlls"):
        return ""
    _dlls_preloaded = True
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        try:
            ort.preload_dlls()
        except (OSError, RuntimeError) as exc:
            print(exc)
    lines = [line.strip() for line in captured.getvalue().splitlines() if line.strip()]
    if lines:
        logger.debug("onnxruntime.preload_dlls said: %s", " | ".join(lines))
    return lines[0].split(": ")[0] if lines else ""


def _new_session(
    model_path: Path, so: ort.SessionOptions, providers: list[str | tuple[str, dict[str, str]]]
) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
    except _LOAD_ERRORS as exc:
        raise BundleError(
            f"ONNX Runtime cannot load {model_path} ({_first_line(exc)}); re-export the bundle "
            "with `bertrt export`."
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _label(model_path: Path) -> str:
    """``embedder/model.onnx`` rather than a long absolute path, for the log line."""
    resolved = model_path.resolve()
    return f"{resolved.parent.name}/{resolved.name}"
