"""Finding and stopping the Ray processes a test started, by process id, and no others.

The machine may run other Ray clusters (other people's tests): a test never stops Ray by
name (``ray stop`` ends every Ray process on the machine). It stops the processes it
started: the children of a process, or the processes whose environment carries a marker
it set for them.
"""

from __future__ import annotations

import contextlib
import signal
import time

import psutil

# The environment variable a test sets on the Ray processes it starts through a command.
MARKER = "BERTRT_TEST_RAY"


def processes_started_by(pid: int) -> list[psutil.Process]:
    """Every live descendant of process ``pid`` (a driver's Ray processes are its children)."""
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if _alive(p)]
    except psutil.NoSuchProcess:
        return []


def processes_marked(token: str) -> list[psutil.Process]:
    """Every live process whose environment has ``BERTRT_TEST_RAY=token`` (Ray passes its
    environment on to every process it starts, workers and replicas included)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == token and _alive(process):
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for ``processes`` to end; the ids of those still alive."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in processes if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p.pid for p in alive]


def stop(processes: list[psutil.Process], grace: float = 5.0) -> list[int]:
    """SIGTERM ``processes``, SIGKILL what is left after ``grace`` seconds; the ids of any
    still alive after that (none, normally)."""
    for process in processes:
        _signal(process, signal.SIGTERM)
    survivors = [p for p in processes if p.pid in set(wait_gone(processes, grace))]
    for process in survivors:
        _signal(process, signal.SIGKILL)
    return wait_gone(survivors, 10.0)


def _signal(process: psutil.Process, signum: int) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        process.send_signal(signum)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
