"""The ingress side of ``--engine ray``: the app's host, whose tasks run in other replicas.

:class:`RayHost` is to the Ray ingress what :class:`~bertrt.serve.host.ModelHost` is to
``bertrt serve``: the routes ask it for a task's caller and await the results. Here the
caller sends the request to the task's Serve deployment, and Ray's failures become the
app's own errors, so clients see the same responses on both engines:

* a request the task refused (bad input) raises that very bertrt error (422);
* a full queue (Serve's ``BackPressureError``) is an OverloadedError (503, ``Retry-After``);
* a replica lost mid-request (its node left the cluster) is retried on another replica, a
  bounded number of times, then answered 503 with ``Retry-After`` as not ready; inference
  has no side effects, so a retry cannot do anything twice.

The host is ready once every task deployment has answered; its replicas' own batches are
recorded in this ingress's metrics, each run once (see :class:`~bertrt.serve.ray_engine.Reply`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from bertrt.errors import BertrtError, NotReadyError, OverloadedError, TaskNotServedError
from bertrt.serve.config import ServeConfig
from bertrt.serve.metrics import ServeMetrics
from bertrt.serve.ray_engine import ReplicaInfo, Reply
from bertrt.types import Task

log = logging.getLogger("bertrt.serve")

# What a request meets when the replica holding it is gone.
# (RayActorError covers a dead actor and an unreachable one.)
REPLICA_LOST = (RayActorError, ReplicaUnavailableError)
# A lost request is sent again this many times, this long apart, before the client gets 503.
RETRIES = 3
RETRY_DELAY_S = 0.5
# How often a host that is not ready yet asks its deployments again.
READY_POLL_S = 0.5


class DeploymentCaller:
    """Sends one task's requests to its Serve deployment (the routes' ``acall``)."""

    def __init__(self, task: Task, handle: Any, metrics: ServeMetrics) -> None:
        self.task = task
        self.handle = handle
        self._batches = metrics.batch_observer(task.value)
        self._depth = metrics.queue_observer(task.value)
        self._in_flight = 0

    async def acall(self, *inputs: str | Sequence[str], **options: Any) -> list[Any]:
        """The request's results, from whichever replica Serve picks."""
        self._in_flight += 1
        self._depth(self._in_flight)
        try:
            reply = await self._send(list(inputs), options)
        finally:
            self._in_flight -= 1
            self._depth(self._in_flight)
        if reply.batch is not None:
            self._batches(reply.batch)
        return reply.results

    async def _send(self, inputs: list[str | Sequence[str]], options: dict[str, Any]) -> Reply:
        for attempt in range(RETRIES + 1):
            try:
                reply: Reply = await self.handle.run.remote(inputs, options)
                return reply
            except RayTaskError as exc:
                # The replica raised: hand on a bertrt error as itself (its status and message).
                if isinstance(exc.cause, BertrtError):
                    raise exc.cause from None
                raise
            except BackPressureError:
                raise OverloadedError(
                    f"The {self.task.value} deployment's queue is full (max_queued_requests); retry shortly, or "
                    "add replicas."
                ) from None
            except REPLICA_LOST as exc:
                log.warning("A %s replica was lost (%s); try %d of %d", self.task.value, exc, attempt + 1, RETRIES + 1)
                if attempt < RETRIES:
                    await asyncio.sleep(RETRY_DELAY_S)
            except DeploymentUnavailableError:
                break
        raise NotReadyError(
            f"No {self.task.value} replica could take this request (a replica or node was lost); retry shortly "
            "while Ray Serve replaces it."
        )


class RayHost:
    """The ingress's :class:`~bertrt.serve.host.ServingHost`: a caller per task deployment."""

    def __init__(self, config: ServeConfig, deployments: dict[Task, Any], metrics: ServeMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.tasks = config.tasks
        self.model_name = config.model_name or ""
        self.callers = {task: DeploymentCaller(task, handle, metrics) for task, handle in deployments.items()}
        self.replicas: dict[Task, ReplicaInfo] = {}
        self._watcher: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Whether every task deployment has answered."""
        return len(self.replicas) == len(self.tasks)

    def start(self) -> None:
        """Ask each task deployment to describe itself, in the background, until all have."""
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._wait_for_deployments())

    def close(self, timeout: float | None = None) -> None:
        """Stop waiting for deployments; requests in flight finish on their replicas."""
        if self._watcher is not None:
            self._watcher.cancel()

    def batcher(self, task: Task) -> DeploymentCaller:
        """Where requests of ``task`` go; NotReadyError or TaskNotServedError when they cannot."""
        if task not in self.tasks:
            served = ", ".join(t.value for t in self.tasks)
            raise TaskNotServedError(
                f"This server does not serve {task.value} (it serves: {served}); deploy it with a bundle or --task "
                f"that includes {task.value}."
            )
        if not self.ready:
            raise NotReadyError("The task deployments are still starting; retry when GET /health returns 200.")
        return self.callers[task]

    def embedding_dim(self) -> int | None:
        """The length of the embedder's vectors, as an embed replica reported it."""
        info = self.replicas.get(Task.EMBED)
        return info.embedding_dim if info is not None else None

    def describe(self) -> dict[str, Any]:
        """Health details, with the same keys as ``bertrt serve``."""
        details: dict[str, Any] = {
            "status": "ready" if self.ready else "loading",
            "model": self.model_name,
            "tasks": [t.value for t in self.tasks],
            "precision": self.config.precision.value,
        }
        if self.ready and self.tasks:
            details["provider"] = self.replicas[self.tasks[0]].provider
        return details

    async def _wait_for_deployments(self) -> None:
        while not self.ready:
            for task, caller in self.callers.items():
                if task not in self.replicas:
                    try:
                        self.replicas[task] = await caller.handle.describe.remote()
                    except Exception as exc:  # starting replicas fail in many ways; ask again
                        log.info("The %s deployment is not answering yet (%s)", task.value, exc)
            if not self.ready:
                await asyncio.sleep(READY_POLL_S)
        self.metrics.set_ready(True)
        log.info("Model %s ready on Ray Serve: %s", self.model_name, ", ".join(t.value for t in self.tasks))
