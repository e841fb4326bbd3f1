"""The Ray engine: the same job on a Ray cluster, with Ray Data.

Ray Data reads the input (``read_text`` for ``.txt`` and ``.jsonl``, ``read_csv``,
``read_parquet``), an actor pool runs :class:`BundleActor` over it with ``map_batches``
(each actor loads the bundle once), and the results stream back to this process, which
writes them through the same job folder as the local engine. So the two engines write
the same file, in the same order:

* **Order.** Ray Data is told to keep the order of the input's blocks
  (``DataContext.execution_options.preserve_order``); blocks still run in parallel, and a
  finished block waits in the object store until the ones before it are out. Rows are
  numbered here, as they arrive, and every row also carries its ``id``.
* **Parsing.** JSON lines are parsed by the actors with the local engine's code, not by
  ``read_json``: Arrow's JSON reader gives a column one type, so a row whose text is a
  number would fail the whole read instead of becoming one error row.
* **Threads.** ONNX Runtime ignores the ``OMP_NUM_THREADS`` Ray sets: each actor gives its
  session as many intra-op threads as Ray assigned it CPUs, and one inter-op thread.
* **Reads are never starved.** Each read task asks for :data:`READ_CPUS` of a CPU and each
  actor for that much less than its whole CPUs, so a node full of actors still has room
  to read (an actor pool that takes every CPU would wait forever for its input). For the
  same reason Parquet is read through Ray Data's first Parquet reader (see :func:`_data_context`).
* **Memory.** Blocks are about one chunk of rows, and nothing materializes the dataset:
  it streams from the reads through the actors to the writer.

Ray's own fault tolerance covers lost workers: a lost actor is restarted and its batches
retried, and a lost block is rebuilt from its lineage. ``--resume`` is for the local
engine; a Ray job that fails leaves nothing behind.

Example::

    report = run_ray(job, RayOptions(address="auto", actors=4, cpus_per_actor=2))
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bertrt import errors
from bertrt.batch.arrow import arrow_table, require_pyarrow
from bertrt.batch.job import BatchJob, InputFormat
from bertrt.batch.outputs import ID, Columns
from bertrt.batch.predict import Predictor
from bertrt.batch.readers import check_input, count_rows, parse_raw
from bertrt.batch.sink import BatchReport, Progress, ResultSink
from bertrt.batch.state import JobFolder
from bertrt.bundle import Bundle
from bertrt.errors import BertrtError, ConfigError, InputError
from bertrt.model_files import open_model
from bertrt.options import RuntimeOptions
from bertrt.ray_cluster import init_ray, ray_target
from bertrt.types import Device

# What a read task asks for; an actor asks for its CPUs less this (see the module docstring).
READ_CPUS = 0.125
# How long --address HOST:PORT may take to accept a connection.
CONNECT_TIMEOUT_S = 5.0
# How a bertrt error raised in an actor ends its traceback in the text Ray hands back.
_BERTRT_ERROR_LINE = re.compile(r"^bertrt\.errors\.(\w+): (.+)$", re.MULTILINE)
# Arrow's CSV reader reads in blocks and fails on a record longer than one.
CSV_BLOCK_BYTES = 16 << 20


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray job runs: the cluster ``address`` (None: ``RAY_ADDRESS``, else
    a Ray instance started for the job), the number of ``actors`` (None: as many as fit)
    and the CPUs (ONNX Runtime threads) of each."""

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: int = 1


@dataclass(frozen=True)
class ActorPlan:
    """How many actors run, and what each asks Ray for (a GPU too for ``--device cuda``:
    Ray shows an actor only the GPUs it was given)."""

    actors: int
    cpus_per_actor: int
    gpus_per_actor: int = 0

    @property
    def actor_num_cpus(self) -> float:
        """The CPUs an actor asks for: its whole CPUs less a read task's share."""
        return self.cpus_per_actor - READ_CPUS


def plan_actors(
    node_cpus: list[float], actors: int | None, cpus_per_actor: int, node_gpus: list[float] | None = None
) -> ActorPlan:
    """The actor pool for a cluster whose nodes have ``node_cpus`` (and ``node_gpus``, when
    each actor needs a GPU): ``actors`` (or as many as fit, node by node) of
    ``cpus_per_actor`` CPUs each; a ConfigError when they cannot fit.

    >>> plan_actors([2.0], None, 1)
    ActorPlan(actors=2, cpus_per_actor=1, gpus_per_actor=0)
    """
    largest = max(node_cpus, default=0.0)
    if cpus_per_actor > largest:
        raise ConfigError(
            f"--cpus-per-actor {cpus_per_actor} is more than any node of the cluster has ({largest:g}); lower it."
        )
    per_node = [int(cpus // cpus_per_actor) for cpus in node_cpus]
    if node_gpus is not None:
        per_node = [min(n, int(gpus)) for n, gpus in zip(per_node, node_gpus, strict=True)]
        if not any(per_node):
            raise ConfigError(
                "--device cuda needs a GPU on a node of the Ray cluster, and it has none; use --device cpu."
            )
    fit = sum(per_node)
    if actors is not None and actors > fit:
        each = f"{cpus_per_actor} CPU(s)" + ("" if node_gpus is None else " and a GPU")
        has = f"{sum(node_cpus):g} CPUs" + ("" if node_gpus is None else f" and {sum(node_gpus):g} GPUs")
        raise ConfigError(
            f"--actors {actors} of {each} each do not fit the cluster's {has}; "
            f"pass --actors {fit} or fewer, or add nodes."
        )
    return ActorPlan(actors or fit, cpus_per_actor, 0 if node_gpus is None else 1)


class BundleActor:
    """Ray Data's callable class: loads the job's runner once, then turns a batch of raw
    input rows into a batch of result columns (an Arrow table)."""

    def __init__(self, job: BatchJob) -> None:
        import ray

        assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        self.threads = max(1, round(assigned))
        self.options = RuntimeOptions(intra_op_threads=self.threads, inter_op_threads=1)
        self.job = job
        self.predict = Predictor(job, self.options)

    def __call__(self, batch: Any) -> Any:
        """Results of one batch (a ``pyarrow.Table`` of raw rows), rows in order."""
        if self.job.input_format in (InputFormat.TXT, InputFormat.JSONL):
            raws = batch.column("text").to_pylist()  # read_text's one column: the lines
        else:
            raws = batch.to_pylist()
        columns = self.predict(parse_raw(self.job, raws))
        # An input may mix integer and string ids; as JSON text they reach the writer unchanged.
        columns[ID] = [json.dumps(value) for value in columns[ID]]
        return arrow_table(columns, self.job.task)


def run_ray(
    job: BatchJob, ray_options: RayOptions, *, overwrite: bool = False, progress: Progress | None = None
) -> BatchReport:
    """Run ``job`` on a Ray cluster with Ray Data and write its output here; returns what it did.

    Connects to ``ray_options.address`` (or reuses this process's Ray connection); a Ray
    instance started for the job is shut down at the end. Nothing is left behind on failure.
    """
    ray = import_ray()
    check_input(job)
    # A wrong folder, task or precision fails here, before Ray starts (checksums are the actors' job).
    open_model(Bundle(job.models).model_dir(job.task), job.task, job.precision, verify=False)
    total = count_rows(job)
    folder = JobFolder.open(job, overwrite=overwrite)
    try:
        with _quiet_ray(), _connected(ray, ray_options.address), _data_context(ray):
            cpus, gpus = _node_resources(ray)
            plan = plan_actors(
                cpus, ray_options.actors, ray_options.cpus_per_actor, gpus if job.device is Device.CUDA else None
            )
            sink = ResultSink(folder, total, "ray", progress)
            for table in _results(ray, job, plan, total):
                columns: Columns = table.to_pydict()
                columns[ID] = [json.loads(value) for value in columns[ID]]
                sink.add(columns)
            return sink.close()
    except BaseException as exc:
        folder.discard()
        cause = _bertrt_cause(exc)
        if cause is not None and cause is not exc:
            raise cause from None
        raise


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a ConfigError saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data; pip install 'bertrt[ray]'.") from None
    return ray


def _results(ray: Any, job: BatchJob, plan: ActorPlan, total: int) -> Iterator[Any]:
    """The result tables of ``job``, in input order, streamed from the actor pool."""
    blocks = max(2 * plan.actors, math.ceil(total / job.chunk_rows))
    dataset = _read(ray, job, blocks).map_batches(
        BundleActor,
        fn_constructor_args=(job,),
        batch_size=job.chunk_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.actor_num_cpus,
        num_gpus=plan.gpus_per_actor,
    )
    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    except Exception as exc:
        error = _read_error(job, exc)
        if error is None:
            raise
        raise error from None


def _read(ray: Any, job: BatchJob, blocks: int) -> Any:
    """The input as a Ray dataset of raw rows in about ``blocks`` blocks."""
    common: dict[str, Any] = {"override_num_blocks": blocks, "num_cpus": READ_CPUS}
    path = str(job.input)
    if job.input_format in (InputFormat.TXT, InputFormat.JSONL):
        return ray.data.read_text(path, drop_empty_lines=False, encoding="utf-8", **common)
    if job.input_format is InputFormat.PARQUET:
        return ray.data.read_parquet(path, columns=list(job.input_columns), **common)
    pa = require_pyarrow()
    import pyarrow.csv as pacsv

    return ray.data.read_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        # Every column a job reads is text (ids too, as the local CSV reader gives them),
        # and quoted fields may hold line breaks.
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in job.input_columns}, include_columns=list(job.input_columns)
        ),
        **common,
    )


@contextmanager
def _connected(ray: Any, address: str | None) -> Iterator[None]:
    """Joins the cluster at ``address`` unless this process already is; leaves what it started.

    An ``address`` given explicitly is checked even when this process has joined a cluster
    already: a HOST:PORT that takes no connection is an error, not silently ignored."""
    if address is not None or not ray.is_initialized():
        _check_reachable(ray_target(address))
    if ray.is_initialized():
        yield
        return
    init_ray(ray, ray_target(address))
    try:
        yield
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """A ConfigError at once when ``address`` names a HOST:PORT that takes no connection
    (``ray.init`` would retry it for minutes)."""
    if address in ("auto", "local") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise ConfigError(
            f"No Ray cluster answers at {address} ({reason}); check --address, or start one with `ray start --head`."
        ) from None


@contextmanager
def _data_context(ray: Any) -> Iterator[None]:
    """Ray Data settings for this job only: keep block order, draw no progress bars (the
    job has its own), and read Parquet through the reader whose tasks all take
    :data:`READ_CPUS`.

    Ray 2.60's DataSourceV2 Parquet reader first lists the files in a task that asks for a
    whole CPU, which an actor pool on every CPU never leaves free: the job would hang.
    """
    context = ray.data.DataContext.get_current()
    settings = {"preserve_order": True, "enable_progress_bars": False, "use_datasource_v2": False}
    before: dict[str, Any] = {}
    for name, value in settings.items():
        owner = context.execution_options if name == "preserve_order" else context
        if hasattr(owner, name):
            before[name] = getattr(owner, name)
            setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(context.execution_options if name == "preserve_order" else context, name, value)


@contextmanager
def _quiet_ray() -> Iterator[None]:
    """Ray Data says only what goes wrong while the job runs: no line per dataset execution,
    no note that its progress bars are off, none of the deprecation warnings it raises about
    its own settings."""
    levels = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    before = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)


def _node_resources(ray: Any) -> tuple[list[float], list[float]]:
    """The CPUs and the GPUs of every live node of the cluster."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    return [float(n.get("CPU", 0)) for n in nodes], [float(n.get("GPU", 0)) for n in nodes]


def _bertrt_cause(exc: BaseException) -> BertrtError | None:
    """The BertrtError behind ``exc``: an actor's error reaches the driver wrapped by Ray
    (a bundle that is not on a worker node, a device the actor cannot use), as an exception
    chain or, when the actor died in its constructor, only as the text of its traceback."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BertrtError):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__
    match = _BERTRT_ERROR_LINE.search(str(exc))
    if match is None:
        return None
    kind = getattr(errors, match.group(1), BertrtError)
    return kind(match.group(2).strip()) if isinstance(kind, type) and issubclass(kind, BertrtError) else None


def _read_error(job: BatchJob, exc: Exception) -> InputError | None:
    """A one-sentence InputError for a file Ray Data could not read, else None."""
    text = str(exc)
    if "UnicodeDecodeError" in text or isinstance(exc, UnicodeDecodeError):
        return InputError(f"{job.input.name} is not valid UTF-8; convert the file to UTF-8.")
    if "CSV parse error" in text or "ArrowInvalid" in text:
        detail = next((line.strip() for line in text.splitlines() if "CSV parse error" in line), "")
        return InputError(
            f"{job.input.name} is not a well-formed CSV file ({detail or 'Arrow could not parse it'}); fix the file."
        )
    return None
