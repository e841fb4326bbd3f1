"""The models behind a server: the bundle loads on a background thread, then each task
gets its :class:`~bertrt.batcher.DynamicBatcher`.

Loading in the background lets the server answer ``GET /health`` (503, "loading") while
sessions are built, which is what orchestrators poll before sending traffic.

Example::

    host = ModelHost(ServeConfig(models=Path("models/minilm")), ServeMetrics())
    host.start()
    host.wait_ready(60)
    await host.batcher(Task.CLASSIFY).acall(["I love Paris"])
    host.close()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from bertrt.batcher import DynamicBatcher
from bertrt.bundle import Bundle
from bertrt.embed import HIDDEN
from bertrt.errors import BertrtError, NotReadyError, TaskNotServedError
from bertrt.serve.config import ServeConfig
from bertrt.types import Task

if TYPE_CHECKING:  # prometheus_client (the serve extra) loads only with a server
    from bertrt.serve.metrics import ServeMetrics

log = logging.getLogger("bertrt.serve")


class TaskCaller(Protocol):
    """What an endpoint awaits to run one request of a task (a batcher, or a client of a
    remote deployment): the runner's inputs and options in, one result per input out."""

    async def acall(self, *inputs: str | Sequence[str], **options: Any) -> list[Any]:
        """The request's results, in order."""
        ...


class ServingHost(Protocol):
    """What the HTTP app needs from the engine behind it: this process's
    :class:`ModelHost`, or a client of models served elsewhere (``--engine ray``)."""

    tasks: tuple[Task, ...]
    model_name: str

    @property
    def ready(self) -> bool:
        """Whether every served model answers."""
        ...

    def start(self) -> None:
        """Begin loading (or reaching) the models; returns at once."""
        ...

    def close(self, timeout: float | None = None) -> None:
        """Stop, letting requests in flight finish within ``timeout`` seconds."""
        ...

    def batcher(self, task: Task) -> TaskCaller:
        """Where requests of ``task`` go; NotReadyError or TaskNotServedError when they cannot."""
        ...

    def embedding_dim(self) -> int | None:
        """The length of the embedder's vectors (None when the graph leaves it symbolic)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Health details: status, model name, tasks, precision, provider."""
        ...


def open_bundle(config: ServeConfig) -> Bundle:
    """The bundle ``config`` serves, opened (its manifest read; models load later), after
    checking that it has every task of ``config.tasks``; a BundleError says what is wrong.

    This is the one check of a server's bundle: ``bertrt serve`` calls it before binding
    its port and a one-process server keeps the result.
    """
    bundle = Bundle(config.models, device=config.device, precision=config.precision, options=config.runtime)
    for task in config.tasks:
        bundle.model_dir(task)
    return bundle


def http_tasks(bundle: Bundle) -> tuple[Task, ...]:
    """The tasks of ``bundle`` the HTTP routes serve: the built-in ones; a bundle's other
    models are not exposed."""
    return tuple(task for task in bundle.tasks if isinstance(task, Task))


class ModelHost:
    """Loads the configured bundle once and owns one batcher per served task.

    ``bundle`` is the bundle :func:`open_bundle` returned for ``config``; when None it is
    opened here.
    """

    def __init__(self, config: ServeConfig, metrics: ServeMetrics, bundle: Bundle | None = None) -> None:
        self.config = config
        self.metrics = metrics
        # Reading the manifest is quick and fails early on a wrong path.
        self.bundle = bundle if bundle is not None else open_bundle(config)
        self.tasks = config.tasks or http_tasks(self.bundle)
        self.model_name = config.model_name or self.bundle.manifest.recipe
        self.error: str | None = None
        self._batchers: dict[Task, DynamicBatcher[Any]] = {}
        self._ready = threading.Event()
        self._loaded = threading.Event()  # set when loading ends, successfully or not
        self._lock = threading.Lock()
        self._closing = False
        self._loader: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        """Whether every served model is loaded and accepting calls."""
        return self._ready.is_set()

    def start(self) -> None:
        """Load the models on a background thread (returns at once)."""
        if self._loader is None:
            self._loader = threading.Thread(target=self._load, name="bertrt-serve-loader", daemon=True)
            self._loader.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until loading ends or ``timeout`` seconds pass; True when the models are ready."""
        self._loaded.wait(timeout)
        return self.ready

    def batcher(self, task: Task) -> DynamicBatcher[Any]:
        """The batcher of ``task``; NotReadyError while loading, TaskNotServedError if absent."""
        if task not in self.tasks:
            served = ", ".join(t.value for t in self.tasks)
            raise TaskNotServedError(
                f"This server does not serve {task.value} (it serves: {served}); start it with a bundle "
                f"or --task that includes {task.value}."
            )
        if not self._ready.is_set():
            if self.error is not None:
                raise NotReadyError(f"The models failed to load ({self.error}); fix the bundle and restart the server.")
            raise NotReadyError("The models are still loading; retry when GET /health returns 200.")
        return self._batchers[task]

    def embedding_dim(self) -> int | None:
        """The length of the embedder's vectors (None when the graph leaves it symbolic)."""
        dim = self.bundle.embedder.session.outputs[HIDDEN].shape[-1]
        return dim if isinstance(dim, int) else None

    def describe(self) -> dict[str, Any]:
        """Health details: status, model name, tasks, device and precision (once ready, the
        variant serving each task and why: ``--precision auto`` chooses per model)."""
        status = "ready" if self.ready else "failed" if self.error else "loading"
        details: dict[str, Any] = {
            "status": status,
            "model": self.model_name,
            "tasks": [t.value for t in self.tasks],
            "precision": self.config.precision.value,
        }
        if self.ready:
            details["provider"] = self.bundle.runner(self.tasks[0]).provider if self.tasks else None
            details["served"] = {task.value: self.bundle.runner(task).served() for task in self.tasks}
        if self.error:
            details["error"] = self.error
        return details

    def close(self, timeout: float | None = None) -> None:
        """Stop every batcher, letting queued requests finish within ``timeout`` seconds."""
        with self._lock:
            self._closing = True
            batchers = list(self._batchers.values())
        for batcher in batchers:
            batcher.close(timeout=timeout)
        if self._loader is not None:
            self._loader.join(timeout)

    def _load(self) -> None:
        try:
            self._load_batchers()
        except BertrtError as exc:
            self.error = str(exc)
            log.error("Loading %s failed: %s", self.config.models, exc)
        except Exception as exc:  # any load failure must reach /health, not vanish with the thread
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("Loading %s failed", self.config.models)
        finally:
            self._loaded.set()

    def _load_batchers(self) -> None:
        for task in self.tasks:
            # Every concrete runner (Embedder, Classifier, QuestionAnswerer) is callable.
            runner = cast(Callable[..., list[Any]], self.bundle.runner(task))
            with self._lock:
                # A server stopped while loading must not start batcher threads.
                if self._closing:
                    return
                self._batchers[task] = DynamicBatcher(
                    runner,
                    self.config.batching,
                    name=task.value,
                    on_batch=self.metrics.batch_observer(task.value),
                    on_queue=self.metrics.queue_observer(task.value),
                )
        self._ready.set()
        self.metrics.set_ready(True)
        log.info("Model %s ready: %s", self.model_name, ", ".join(t.value for t in self.tasks))
