"""The API keys a server accepts: given on the command line, in ``$BERTRT_API_KEYS``, or in a
key file (one key per line) that is reread while the server runs.

Keys are kept as SHA-256 digests and a presented key is compared with every one of them in
constant time (:func:`hmac.compare_digest` on equal-length digests, no early exit), so the
time a check takes says nothing about how much of a key was right.

A key file is reread when the process gets SIGHUP (see :meth:`ApiKeys.reload_on_sighup`)
and when the file changes: every request checks, at most once per :data:`KEY_FILE_CHECK_S`,
whether its size, modification time or inode moved. That second path needs no signal, so
every process serving the app (each ``--workers`` process, each Ray Serve replica) picks up
a new file on its own. A file that cannot be read, or holds no valid key, never replaces
the keys in force: the server logs why and keeps them.

No key ever reaches a log line or an error message: they name a key by its place ("line 3").

Example::

    keys = ApiKeys(["k1"], key_file=Path("/etc/bertrt/keys"))
    keys.accepts(b"k1")   # True
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from bertrt.errors import ConfigError

if TYPE_CHECKING:
    from bertrt.serve.config import ServeConfig

log = logging.getLogger("bertrt.serve")

API_KEYS_ENV = "BERTRT_API_KEYS"
# How often a request may look at the key file's metadata (one stat call).
KEY_FILE_CHECK_S = 1.0
# RFC 6750's token68 characters: any such key travels unchanged in `Authorization: Bearer KEY`.
KEY_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
KEY_RULE = (
    "a key holds letters, digits and - . _ ~ + / (then optional = padding), as a Bearer token must; "
    'make one with python -c "import secrets; print(secrets.token_urlsafe(32))"'
)

FileSignature = tuple[int, int, int]


def check_key(key: str, where: str) -> str:
    """``key`` when it is a valid Bearer token, else a ConfigError naming ``where`` (never the key)."""
    if not KEY_PATTERN.fullmatch(key):
        problem = "is empty" if not key else "is not a valid API key"
        raise ConfigError(f"{where} {problem}: {KEY_RULE}.")
    return key


def keys_from_text(text: str, where: str) -> tuple[str, ...]:
    """The keys of a comma-separated list (``$BERTRT_API_KEYS``); blanks around commas are dropped."""
    items = [item.strip() for item in text.split(",")]
    return tuple(check_key(item, f"Key {n} of {where}") for n, item in enumerate(items, 1) if item)


def read_key_file(path: Path) -> tuple[str, ...]:
    """The keys of a key file: one per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"The API key file {path} does not exist; create it with one key per line.") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(
            f"The API key file {path} cannot be read ({reason}); make it a readable UTF-8 file."
        ) from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(check_key(line, f"Line {number} of {path}"))
    if not keys:
        raise ConfigError(f"The API key file {path} holds no key; put one key per line.")
    return tuple(keys)


class ApiKeys:
    """The keys one server process accepts: fixed ``keys`` and those of ``key_file``.

    ``check_every_s``: how often a request may look whether the key file changed.
    Raises ConfigError when the key file cannot be read or holds no valid key.
    """

    def __init__(
        self, keys: Iterable[str] = (), key_file: Path | None = None, *, check_every_s: float = KEY_FILE_CHECK_S
    ) -> None:
        self.key_file = key_file
        self.check_every_s = check_every_s
        self._fixed = tuple(_digest(check_key(key, f"API key #{n}")) for n, key in enumerate(keys, 1))
        self._from_file: tuple[bytes, ...] = ()
        self._signature: FileSignature | None = None
        self._next_check = 0.0
        self._reloading = threading.Lock()
        if key_file is not None:
            self._signature = _signature(key_file)
            self._from_file = tuple(_digest(key) for key in read_key_file(key_file))
            self._next_check = time.monotonic() + check_every_s
        if not self._fixed and not self._from_file:
            raise ConfigError("No API key given; pass at least one key, or no key at all to serve without them.")

    @classmethod
    def from_config(cls, config: ServeConfig) -> ApiKeys | None:
        """The keys ``config`` names, or None when it serves without keys."""
        if not config.api_keys and config.api_key_file is None:
            return None
        return cls(config.api_keys, config.api_key_file)

    def __len__(self) -> int:
        return len(self._fixed) + len(self._from_file)

    def accepts(self, presented: bytes) -> bool:
        """Whether ``presented`` is one of the keys (constant time in what was presented)."""
        self._reload_if_changed()
        digest = _digest_bytes(presented)
        matched = False
        for known in self._fixed + self._from_file:
            matched |= hmac.compare_digest(digest, known)  # `|=`, not `any()`: no early exit
        return matched

    def reload(self) -> bool:
        """Reread the key file now; True when its keys replaced the previous ones. On a bad
        file the previous keys stay in force and the reason is logged."""
        if self.key_file is None:
            return False
        with self._reloading:
            self._signature = _signature(self.key_file)
            self._next_check = time.monotonic() + self.check_every_s
            try:
                keys = read_key_file(self.key_file)
            except ConfigError as exc:
                log.error("Keeping the previous API keys: %s", exc)
                return False
            self._from_file = tuple(_digest(key) for key in keys)
        log.info("Read %d API key(s) from %s.", len(keys), self.key_file)
        return True

    def reload_on_sighup(self) -> Callable[[], None]:
        """Reread the key file whenever this process gets SIGHUP, from the running event loop.
        Returns the function that stops it. A no-op off the main thread (signals reach only
        the main thread's loop) or without a key file; the change check still runs there."""
        if self.key_file is None or not hasattr(signal, "SIGHUP"):
            return _nothing
        if threading.current_thread() is not threading.main_thread():
            return _nothing
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError, ValueError):  # a loop or an engine that owns signals
            return _nothing

        def stop() -> None:
            with contextlib.suppress(RuntimeError, ValueError):  # the loop may be closing
                loop.remove_signal_handler(signal.SIGHUP)

        return stop

    def _reload_if_changed(self) -> None:
        if self.key_file is None or time.monotonic() < self._next_check:
            return
        # A request finding another thread mid-reload goes on with the keys in force.
        if not self._reloading.acquire(blocking=False):
            return
        try:
            self._next_check = time.monotonic() + self.check_every_s
            changed = _signature(self.key_file) != self._signature
        finally:
            self._reloading.release()
        if changed:
            self.reload()


def _signature(path: Path) -> FileSignature | None:
    """What changes when a file is rewritten or replaced (None when it cannot be looked at)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def _digest(key: str) -> bytes:
    return _digest_bytes(key.encode("ascii"))


def _digest_bytes(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _nothing() -> None:
    return None
