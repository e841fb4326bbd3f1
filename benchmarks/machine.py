"""The machine and software a run was measured on: CPU model, cores, GPU, load, versions.

Timings mean nothing without these, and comparing runs across machines is the most
common benchmarking mistake, so every results file carries them.

Example::

    machine_info()["cpu_model"]   # 'AMD EPYC 9R14 96-Core Processor'
    cpu_features()                # ('avx2', 'avx512f', 'avx512_vnni', 'amx_bf16', 'amx_int8', ...)
    load_average()                # (0.42, 0.61, 0.80)
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bertrt.lanes import usable_cores

# CPU flags that decide which kernels run: AVX-512 and VNNI for int8 GEMMs, bf16 and AMX
# for PyTorch's bf16 autocast and ONNX Runtime's AMX int8 GEMMs, fp16 arithmetic.
FEATURE_FLAGS = (
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "bf16",
    "i8mm",
)
# Distributions whose versions explain the numbers; absent ones are reported as None.
_VERSIONED = (
    "bertrt",
    "onnxruntime-gpu",
    "onnxruntime",
    "numpy",
    "tokenizers",
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "sentence-transformers",
)


def machine_info() -> dict[str, Any]:
    """CPU model, logical and usable cores, memory, GPU name (None without one), OS, Python
    and library versions."""
    return {
        "cpu_model": cpu_model(),
        "cpu_features": list(cpu_features()),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gb": _memory_gb(),
        "gpu": gpu_name(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": library_versions(),
    }


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_features() -> tuple[str, ...]:
    """The :data:`FEATURE_FLAGS` this CPU reports (``/proc/cpuinfo``; empty where unknown).

    >>> "avx512_vnni" in cpu_features()   # on a Xeon since Cascade Lake
    True
    """
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return ()
    for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[1].split())
            return tuple(flag for flag in FEATURE_FLAGS if flag in present)
    return ()


def has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX or AVX-512 bf16), the case
    where PyTorch's bf16 autocast is the fast path users reach for."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_features()))


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name from ``nvidia-smi``, or None where there is none."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return names[0] if names else None


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS does not report them).

    Other processes on the machine skew every figure, so runs record this before and after.
    """
    try:
        return os.getloadavg()
    except OSError:
        return None


def cpu_ticks() -> tuple[int, int] | None:
    """The machine's CPU time so far as ``(stolen, total)`` clock ticks, from the ``cpu``
    line of ``/proc/stat`` (None off Linux). Stolen time is what the hypervisor gave to
    other guests while this one wanted to run: a stretch with a lot of it is a slow stretch
    for whichever system was being timed, through no fault of its own."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(value) for value in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    # already counted in user and nice, so the total stops at steal.
    return ticks[7], sum(ticks[:8])


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time stolen between two :func:`cpu_ticks` readings (None when
    either is missing or no tick passed).

    >>> steal_share((10, 1000), (30, 1100))
    0.2
    """
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape the numbers (None when absent)."""
    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _memory_gb() -> float | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text(encoding="utf-8").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None
