"""Helpers for tests that run the server: the app under uvicorn in a thread, on a free
loopback port, over HTTP or HTTPS, and `bertrt serve` as a child process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn

from bertrt.serve import ServeConfig
from bertrt.serve.app import create_app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def wait_until_ready(url: str, timeout: float = 60.0, verify: Any = True) -> None:
    """Poll ``GET /health`` (open whatever the keys) until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not become ready in {timeout} s")


class ServerThread:
    """The real app for ``config`` under uvicorn on a free loopback port, in a thread of this
    process; HTTPS when the config names a certificate."""

    def __init__(self, config: ServeConfig, log_level: str = "warning", verify: Any = True) -> None:
        self.app = create_app(config)
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        scheme = "https" if config.ssl_certfile else "http"
        self.url = f"{scheme}://127.0.0.1:{self.socket.getsockname()[1]}"
        self.verify = verify
        uvicorn_config = uvicorn.Config(self.app, log_level=log_level, lifespan="on", **config.ssl_options())
        self.server = uvicorn.Server(uvicorn_config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]})

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until_ready(self.url, verify=self.verify)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.socket.close()


class ServeProcess:
    """``bertrt serve ARGS`` in a child process (its own process group) on a free loopback
    port; stdout and stderr go to ``log``. Leaving the block stops it with SIGTERM (SIGKILL
    for the whole group if it hangs) and ``output`` holds everything it printed."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None, scheme: str = "http") -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "bertrt", "serve", "--port", str(self.port), *args]
        self.env = env if env is not None else dict(os.environ)
        self.log_path = log
        self.output = ""
        self._log: IO[str] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServeProcess:
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            self.command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> int:
        """SIGTERM, then wait (bounded); the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        return self.process.returncode

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            if self._log is not None:
                self._log.close()
            self.output = self.log_path.read_text()
