"""The Ray Serve deployments of ``bertrt serve --engine ray`` (imports ray: the ``ray`` extra).

* :class:`TaskReplica`: one task's runner on one replica. Requests are checked as they
  arrive (a bad one fails alone, before it waits), then merged by a ``@serve.batch``
  method into runner calls, one per set of options (``top_k``...), run on a worker thread
  so the replica keeps taking requests meanwhile. As in the local batcher, a merged run
  that fails is rerun call by call, so only the request that broke it sees the error.
* :class:`Ingress`: the FastAPI app of ``bertrt serve`` (:func:`~bertrt.serve.app.create_app`),
  mounted with ``@serve.ingress``, over a :class:`~bertrt.serve.ray_host.RayHost` that
  sends each request to its task's deployment.

:func:`build_application` wires them for ``serve.run``; :func:`app_builder` is the same for
``serve deploy serve.yaml`` (its ``import_path``).

Example::

    serve.run(build_application(config, RayServeOptions(replicas=2)), name="bertrt", route_prefix="/")
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import ray
from fastapi import FastAPI
from ray import serve

from bertrt.batcher import BatcherOptions, BatchReport, Item, call_items, options_key, run_items, run_merged
from bertrt.bundle import Bundle
from bertrt.embed import HIDDEN
from bertrt.serve.config import ServeConfig
from bertrt.serve.ray_engine import (
    INGRESS,
    RayServeOptions,
    ReplicaInfo,
    Reply,
    batching_from_settings,
    config_from_args,
    deployment_settings,
    resolve_config,
)
from bertrt.types import Task

_DEFAULT_BATCHING = BatcherOptions()


@dataclass
class _BatchLimit:
    """A replica's batching now (``reconfigure`` changes it); shared by its queued calls."""

    max_batch_size: int
    batch_wait_timeout_s: float


@dataclass(frozen=True)
class _Call:
    items: list[Item]
    options: tuple[tuple[str, Any], ...]
    limit: _BatchLimit


def _batch_weight(calls: list[_Call]) -> int:
    """Texts (or QA pairs) in a batch, each call counted up to the batch limit: Serve refuses
    a call that alone outweighs the limit, where the local batcher runs it alone, and a
    call counted at the limit does just that (no other call fits beside it)."""
    return sum(min(len(call.items), call.limit.max_batch_size) for call in calls)


def replica_threads() -> int:
    """ONNX Runtime intra-op threads for this replica: the CPUs Ray assigned it (at least
    one). ONNX Runtime ignores the ``OMP_NUM_THREADS`` Ray sets, so it is told here."""
    cpus: float = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, round(cpus))


class TaskReplica:
    """One task's runner on one Serve replica, batching the requests it holds."""

    def __init__(self, config_json: str, task: str) -> None:
        config = ServeConfig.from_json(config_json)
        self.task = Task(task)
        threads = replica_threads()
        runtime = replace(config.runtime, intra_op_threads=threads, inter_op_threads=1)
        bundle = Bundle(config.models, device=config.device, precision=config.precision, options=runtime)
        # Loaded now: Serve sends no request to a replica before its constructor returns.
        self.runner = bundle.runner(self.task)
        # Every concrete runner (Embedder, Classifier, QuestionAnswerer) is callable.
        self.run_texts = cast(Callable[..., list[Any]], self.runner)
        self.recipe = bundle.manifest.recipe
        self.arity = 2 if self.task is Task.QA else 1
        self.calls = 0
        self.limit = _BatchLimit(_DEFAULT_BATCHING.max_batch_size, _DEFAULT_BATCHING.max_wait_ms / 1000)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` (``max_batch_size``, ``batch_wait_timeout_s``) to the
        running replica.

        Whether ``max_ongoing_requests`` can fill a batch is checked when the app is built;
        Serve calls this before the replica sees the rest of a new config, so a check here
        would read the old ``max_ongoing_requests`` (Serve itself logs a warning when a
        batch cannot fill)."""
        batching = batching_from_settings(user_config)
        # No await from here on: a batch being formed sees either all the change or none.
        self.limit.max_batch_size = batching.max_batch_size
        self.limit.batch_wait_timeout_s = batching.max_wait_ms / 1000
        self._run_batch.set_max_batch_size(batching.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(batching.max_wait_ms / 1000)

    async def run(self, inputs: Sequence[str | Sequence[str]], options: dict[str, Any]) -> Reply:
        """One request: the runner's inputs (texts, or questions and contexts) and options."""
        items = call_items(self.run_texts, tuple(inputs), self.arity, self.task.value)
        self.calls += 1
        if not items:
            return Reply([])
        outcome = await self._run_batch(_Call(items, options_key(options), self.limit))
        if isinstance(outcome, Exception):
            raise outcome
        reply: Reply = outcome
        return reply

    def describe(self) -> ReplicaInfo:
        """Where this replica runs, how it is set up and how many requests it has taken."""
        dim = self.runner.session.outputs[HIDDEN].shape[-1] if self.task is Task.EMBED else None
        return ReplicaInfo(
            task=self.task.value,
            replica=serve.get_replica_context().replica_tag,
            node_id=ray.get_runtime_context().get_node_id(),
            provider=self.runner.provider,
            intra_op_threads=self.runner.session.intra_op_threads,
            max_batch_size=self.limit.max_batch_size,
            batch_wait_timeout_s=self.limit.batch_wait_timeout_s,
            calls=self.calls,
            recipe=self.recipe,
            embedding_dim=dim if isinstance(dim, int) else None,
        )

    @serve.batch(  # type: ignore[untyped-decorator]
        max_batch_size=_DEFAULT_BATCHING.max_batch_size,
        batch_wait_timeout_s=_DEFAULT_BATCHING.max_wait_ms / 1000,
        batch_size_fn=_batch_weight,
    )
    async def _run_batch(self, calls: list[_Call]) -> list[Reply | Exception]:
        return await asyncio.to_thread(self._run_calls, calls)

    def _run_calls(self, calls: list[_Call]) -> list[Reply | Exception]:
        """Each call's reply: calls with equal options merged into one runner call."""
        groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        for index, call in enumerate(calls):
            groups.setdefault(call.options, []).append(index)
        replies: dict[int, Reply | Exception] = {}
        for options, indices in groups.items():
            started = time.perf_counter()
            run = functools.partial(run_items, self.run_texts, options=options, name=self.task.value)
            outcomes, failed = run_merged(run, [calls[i].items for i in indices])
            # One reply of each run carries its report, so the ingress counts each run once.
            report: BatchReport | None = BatchReport(
                calls=len(indices),
                items=sum(len(calls[i].items) for i in indices),
                tokens=0,  # not counted here: Serve batches by texts only
                seconds=time.perf_counter() - started,
                failed=failed,
            )
            for index, outcome in zip(indices, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    replies[index] = outcome
                else:
                    replies[index], report = Reply(outcome, report), None
        return [replies[index] for index in range(len(calls))]


class Ingress:
    """The HTTP API of ``bertrt serve`` in front of the task deployments."""

    def __init__(self, config_json: str, deployments: dict[str, Any]) -> None:
        self.config = ServeConfig.from_json(config_json)
        self.deployments = {Task(name): handle for name, handle in deployments.items()}

    def __serve_build_asgi_app__(self) -> FastAPI:
        from bertrt.serve.app import create_app
        from bertrt.serve.metrics import ServeMetrics, drop_created_series
        from bertrt.serve.ray_host import RayHost

        drop_created_series()  # the same series as `bertrt serve`
        metrics = ServeMetrics()
        return create_app(self.config, host=RayHost(self.config, self.deployments, metrics), metrics=metrics)

    def node_id(self) -> str:
        """The Ray node this ingress replica runs on."""
        node: str = ray.get_runtime_context().get_node_id()
        return node


# The deployments (Ray's decorators applied as calls: a decorated class keeps its own type
# for mypy, which would then not know the Deployment's methods).
TASK_DEPLOYMENT: Any = serve.deployment(TaskReplica)
INGRESS_DEPLOYMENT: Any = serve.deployment(serve.ingress()(Ingress))


def build_application(config: ServeConfig, options: RayServeOptions) -> Any:
    """The Serve application for a resolved ``config`` (absolute bundle path, tasks and
    model name spelt out: see :func:`~bertrt.serve.ray_engine.resolve_config`).

    Raises ConfigError when the layout cannot work (``max_ongoing_requests`` below
    ``max_batch_size``, GPUs on a CPU-only app), before anything deploys.
    """
    settings = deployment_settings(config, options)
    # Batching lives in each deployment's settings (user_config, max_queued_requests), not in
    # the replicas' arguments: a change then reconfigures running replicas, not new ones.
    ingress_json = replace(config, batching=BatcherOptions()).to_json()
    # Only the ingress checks API keys; the task replicas never see them.
    task_json = replace(
        config, batching=BatcherOptions(), api_keys=(), api_key_file=None, ssl_certfile=None, ssl_keyfile=None
    ).to_json()
    tasks = {
        task.value: TASK_DEPLOYMENT.options(name=task.value, **settings[task.value]).bind(task_json, task.value)
        for task in config.tasks
    }
    return INGRESS_DEPLOYMENT.options(name=INGRESS, **settings[INGRESS]).bind(ingress_json, tasks)


def app_builder(args: dict[str, Any]) -> Any:
    """The application ``serve deploy serve.yaml`` builds (``import_path``); ``args`` as
    ``--print-config`` writes them. The file's ``deployments`` section then sets each
    deployment's replicas, resources and batching."""
    return build_application(resolve_config(config_from_args(args)), RayServeOptions())
