"""Dynamic batching across concurrent callers: many single requests, one model run.

A service calls a model one request at a time from many threads or coroutines; run one by
one, the model spends its time on per-run overhead and tiny matrices. A
:class:`DynamicBatcher` wraps one loaded runner (embedder, classifier or QA), queues the
calls it receives, and a worker thread merges the calls queued together into one runner
call (which groups texts by length internally), then hands each caller exactly its own
results. A batch closes when it holds ``max_batch_size`` texts (or QA pairs), when its
token count would pass ``max_batch_tokens``, or ``max_wait_ms`` after its oldest call
arrived, whichever comes first. Calls merge only with calls of the same options
(``top_k``, ``pooling``...).

* One caller's bad input fails that caller only: inputs are checked before they are
  queued, and when a merged run fails anyway, each of its calls runs again on its own.
* The queue is bounded: when ``max_queue`` calls wait, new calls fail at once with
  :class:`~bertrt.errors.OverloadedError` instead of piling up.
* :meth:`DynamicBatcher.close` lets queued calls finish (or fails them with
  :class:`~bertrt.errors.BatcherClosedError`) and joins every worker thread.

Example::

    bundle = bertrt.load("models/minilm")
    with DynamicBatcher(bundle.classifier, BatcherOptions(max_wait_ms=2)) as classify:
        classify("I love Paris", top_k=2)[0].label          # from any thread
        # or, in a coroutine:
        results = await classify.acall("I love Paris")
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tokenizers import Tokenizer

from bertrt.errors import BatcherClosedError, ConfigError, InputError, OverloadedError, RunnerError
from bertrt.limits import as_texts, check_texts
from bertrt.qa import QuestionAnswerer
from bertrt.runner import TaskRunner

R = TypeVar("R")
log = logging.getLogger("bertrt.batcher")

# One queued unit of work: a text, or a (question, context) pair.
Item = tuple[str, ...]
TokenCounter = Callable[[list[Item]], list[int]]

_names = itertools.count()


@dataclass(frozen=True)
class BatcherOptions:
    """How calls are merged and how much may wait.

    ``max_batch_size``: texts (or QA pairs) per merged run. ``max_batch_tokens``: the
    token budget of a merged run (a call larger than the budget still runs, alone).
    ``max_wait_ms``: how long the oldest queued call may wait for company; 0 runs
    whatever is queued at once. ``max_queue``: calls that may wait before new ones are
    refused. ``workers``: threads running merged batches (1 keeps the model's own
    intra-op threads busy without oversubscribing the CPU).

    >>> BatcherOptions(max_batch_size=1).max_batch_size   # one call per run: no batching
    1
    """

    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    workers: int = 1

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_batch_tokens", "max_queue", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer of 1 or more, got {value!r}.")
        if not 0 <= self.max_wait_ms <= 60_000:
            raise ConfigError(f"max_wait_ms must be between 0 and 60000, got {self.max_wait_ms!r}.")


@dataclass(frozen=True)
class BatchReport:
    """What one merged run did, as handed to a batcher's ``on_batch`` observer."""

    calls: int
    items: int
    tokens: int
    seconds: float
    failed: bool


@dataclass
class _Call:
    items: list[Item]
    options: tuple[tuple[str, Any], ...]
    tokens: int
    future: Future[list[Any]]
    enqueued: float


class DynamicBatcher(Generic[R]):
    """Merges concurrent calls to ``runner`` into batched runs on a worker thread.

    Call it like the runner it wraps (``batcher(texts, top_k=2)``, for QA
    ``batcher(questions, contexts)``), from any number of threads, or ``await
    batcher.acall(...)`` from coroutines; :meth:`submit` returns a future.
    ``on_batch`` is called (on the worker thread) with a :class:`BatchReport` after each
    merged run; ``on_queue`` with the number of calls waiting, each time it changes (under
    the batcher's lock, so the depths arrive in order: keep it quick). ``arity`` (inputs
    per call) and ``count_tokens`` are found from a bertrt runner; pass them for any other
    callable.

    >>> # batcher = DynamicBatcher(bundle.embedder, BatcherOptions(max_batch_size=64))
    >>> # batcher(["one text", "another"], pooling="mean")[1].vector
    """

    def __init__(
        self,
        runner: Callable[..., list[R]],
        options: BatcherOptions | None = None,
        *,
        name: str | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
        arity: int | None = None,
        count_tokens: TokenCounter | None = None,
    ) -> None:
        self.options = options or BatcherOptions()
        self.name = name or f"batcher-{next(_names)}"
        if isinstance(runner, TaskRunner) and self.options.max_batch_size > runner.options.max_texts_per_call:
            # A merged run is one runner call: it must stay within the runner's own limit.
            raise ConfigError(
                f"max_batch_size ({self.options.max_batch_size}) is more than the runner's max_texts_per_call "
                f"({runner.options.max_texts_per_call}); lower it or raise RuntimeOptions(max_texts_per_call=...)."
            )
        self._runner = runner
        self._on_batch = on_batch
        self._on_queue = on_queue
        self._arity = arity or (2 if isinstance(runner, QuestionAnswerer) else 1)
        self._count_tokens = count_tokens or _token_counter(runner)
        self._queue: deque[_Call] = deque()
        self._queued_items = 0
        self._queued_tokens = 0
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"bertrt-{self.name}-{i}", daemon=True)
            for i in range(self.options.workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def queue_depth(self) -> int:
        """Calls waiting to be taken into a batch."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (new calls are refused)."""
        return self._closed

    def submit(self, *inputs: str | Sequence[str], **options: Any) -> Future[list[R]]:
        """Queue a call; the future holds its results, in order, or its error.

        Raises at once (nothing queued) on invalid inputs (:class:`InputError`), a full
        queue (:class:`OverloadedError`) or a closed batcher (:class:`BatcherClosedError`).
        """
        items = call_items(self._runner, inputs, self._arity, self.name)
        key = options_key(options)
        future: Future[list[R]] = Future()
        if not items:
            future.set_result([])
            return future
        call = _Call(items, key, sum(self._count_tokens(items)), future, time.monotonic())
        with self._cond:
            if self._closed:
                raise BatcherClosedError(f"{self.name} is closed; send the call to a running batcher.")
            if len(self._queue) >= self.options.max_queue:
                raise OverloadedError(
                    f"{self.name} has {len(self._queue)} calls waiting (max_queue); retry shortly or raise max_queue."
                )
            self._queue.append(call)
            self._queued_items += len(items)
            self._queued_tokens += call.tokens
            self._queue_changed()
            self._cond.notify()
        return future

    def __call__(self, *inputs: str | Sequence[str], **options: Any) -> list[R]:
        """Run a call through the batcher and wait for its results (see :meth:`submit`)."""
        return self.submit(*inputs, **options).result()

    async def acall(self, *inputs: str | Sequence[str], **options: Any) -> list[R]:
        """The awaitable form of :meth:`__call__`; the event loop is free while it waits."""
        return await asyncio.wrap_future(self.submit(*inputs, **options))

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new calls, then finish the queued ones (``drain``) or fail them with
        :class:`BatcherClosedError`, and join the worker threads.

        Calls still queued when ``timeout`` seconds have passed are failed too; a batch
        already running always completes.
        """
        with self._cond:
            self._closed = True
            # Emptied under the same lock, so no worker can start one of these calls.
            dropped = [] if drain else self._pop_all()
            self._cond.notify_all()
        self._fail_closed(dropped)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._cond:
            dropped = self._pop_all()
        self._fail_closed(dropped)

    def __enter__(self) -> DynamicBatcher[R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _work(self) -> None:
        while (calls := self._next_batch()) is not None:
            self._run(calls)

    def _next_batch(self) -> list[_Call] | None:
        """Wait for a batch to fill or its oldest call to time out; None once closed and empty."""
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return None
                while self._queue and (remaining := self._time_to_wait()) > 0:
                    self._cond.wait(remaining)
                # Another worker may have emptied the queue meanwhile.
                if self._queue:
                    calls = self._take()
                    break
        # A caller that cancelled (e.g. an asyncio task) while queued is dropped here.
        return [call for call in calls if call.future.set_running_or_notify_cancel()]

    def _time_to_wait(self) -> float:
        """Seconds the oldest queued call may still wait for company; 0 when the batch must run."""
        limits = self.options
        if (
            self._closed
            or self._queued_items >= limits.max_batch_size
            or self._queued_tokens >= limits.max_batch_tokens
        ):
            return 0.0
        return self._queue[0].enqueued + limits.max_wait_ms / 1000 - time.monotonic()

    def _take(self) -> list[_Call]:
        """Pop the oldest call and every later call with its options that still fits."""
        head = self._queue.popleft()
        taken, kept = [head], deque[_Call]()
        items, tokens = len(head.items), head.tokens
        limits = self.options
        while self._queue and items < limits.max_batch_size:
            call = self._queue.popleft()
            fits = items + len(call.items) <= limits.max_batch_size and tokens + call.tokens <= limits.max_batch_tokens
            if fits and call.options == head.options:
                taken.append(call)
                items, tokens = items + len(call.items), tokens + call.tokens
            else:
                kept.append(call)
        kept.extend(self._queue)
        self._queue = kept
        self._queued_items -= items
        self._queued_tokens -= tokens
        self._queue_changed()
        return taken

    def _run(self, calls: list[_Call]) -> None:
        if not calls:
            return
        started = time.perf_counter()
        options = calls[0].options
        outcomes, failed = run_merged(lambda items: self._run_items(items, options), [call.items for call in calls])
        for call, outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, Exception):
                call.future.set_exception(outcome)
            else:
                call.future.set_result(outcome)
        self._report(calls, [item for call in calls for item in call.items], started, failed)

    def _run_items(self, items: list[Item], options: tuple[tuple[str, Any], ...]) -> list[R]:
        return run_items(self._runner, items, options, self.name)

    def _report(self, calls: list[_Call], items: list[Item], started: float, failed: bool) -> None:
        if self._on_batch is None:
            return
        report = BatchReport(
            len(calls), len(items), sum(c.tokens for c in calls), time.perf_counter() - started, failed
        )
        try:
            self._on_batch(report)
        except Exception:
            # A broken observer must not kill the worker thread and strand every later call.
            log.exception("%s: the on_batch observer failed", self.name)

    def _pop_all(self) -> list[_Call]:
        """Empty the queue (the caller holds the lock)."""
        dropped = list(self._queue)
        self._queue.clear()
        self._queued_items = self._queued_tokens = 0
        if dropped:
            self._queue_changed()
        return dropped

    def _queue_changed(self) -> None:
        """Report the queue depth to ``on_queue`` (the caller holds the lock)."""
        if self._on_queue is None:
            return
        try:
            self._on_queue(len(self._queue))
        except Exception:
            log.exception("%s: the on_queue observer failed", self.name)

    def _fail_closed(self, dropped: list[_Call]) -> None:
        for call in dropped:
            if call.future.set_running_or_notify_cancel():
                call.future.set_exception(
                    BatcherClosedError(f"{self.name} was closed before this call ran; retry on a running service.")
                )


def call_items(
    runner: Callable[..., Any], inputs: tuple[str | Sequence[str], ...], arity: int, name: str
) -> list[Item]:
    """One call's inputs as the items a merged run takes (a text, or a question and its
    context), checked against a bertrt runner's limits before the call waits in line.

    Raises InputError naming what is wrong: the number of inputs, a value that is not a
    string, a length past a limit, or questions and contexts that do not pair up.

    >>> call_items(len, ("a", ["b", "c"]), 2, "qa")
    Traceback (most recent call last):
    bertrt.errors.InputError: Got 1 questions but 2 contexts; pass one context per question.
    """
    if len(inputs) != arity:
        what = "texts" if arity == 1 else "questions and contexts"
        raise InputError(f"{name} takes {what} ({arity} input(s)), got {len(inputs)}.")
    names = ("text",) if arity == 1 else ("question", "context")
    columns = [_checked(runner, values, what) for values, what in zip(inputs, names, strict=True)]
    if len({len(column) for column in columns}) > 1:
        counts = " but ".join(f"{len(c)} {n}s" for c, n in zip(columns, names, strict=True))
        raise InputError(f"Got {counts}; pass one context per question.")
    return list(zip(*columns, strict=True))


def _checked(runner: Callable[..., Any], values: str | Sequence[str], what: str) -> list[str]:
    """One input as a list of str, within the runner's limits (a bertrt runner's
    ``RuntimeOptions``), so an oversized call is refused before it waits in line."""
    if not isinstance(runner, TaskRunner):
        return as_texts(values, what)
    if what == "context":
        return check_texts(values, runner.options, what, runner.options.max_context_chars, "max_context_chars")
    return check_texts(values, runner.options, what)


def run_items(
    runner: Callable[..., list[R]], items: list[Item], options: tuple[tuple[str, Any], ...], name: str
) -> list[R]:
    """One runner call over ``items`` with ``options`` (an :func:`options_key`); one result per item."""
    columns = [list(column) for column in zip(*items, strict=True)]
    results = runner(*columns, **dict(options))
    if len(results) != len(items):
        raise RunnerError(
            f"{name}'s runner returned {len(results)} results for {len(items)} inputs; "
            "a runner must return one result per input, in order."
        )
    return results


def run_merged(
    run: Callable[[list[Item]], list[R]], calls: Sequence[list[Item]]
) -> tuple[list[list[R] | Exception], bool]:
    """Run the items of every call in one ``run``, and give each call its own results.

    When the merged run fails, each call runs again on its own, so only the caller whose
    input broke it sees an error. Returns each call's results (or its exception), and
    whether the merged run failed.

    >>> run_merged(lambda items: [len(item[0]) for item in items], [[("a",)], [("bb",), ("c",)]])
    ([[1], [2, 1]], False)
    """
    try:
        results = run([item for items in calls for item in items])
    except Exception as exc:
        if len(calls) == 1:
            return [exc], True
        return [_run_alone(run, items) for items in calls], True
    outcomes: list[list[R] | Exception] = []
    offset = 0
    for items in calls:
        outcomes.append(results[offset : offset + len(items)])
        offset += len(items)
    return outcomes, False


def _run_alone(run: Callable[[list[Item]], list[R]], items: list[Item]) -> list[R] | Exception:
    try:
        return run(items)
    except Exception as exc:
        return exc


def options_key(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The call's options as a hashable key; calls merge only when their keys are equal."""
    key = tuple(sorted(options.items()))
    try:
        hash(key)
    except TypeError:
        raise InputError("Option values must be plain values (str, number, bool or None).") from None
    return key


def _token_counter(runner: Callable[..., Any]) -> TokenCounter:
    """Exact token counts from a bertrt runner's tokenizer; one token per character for
    any other callable (a safe over-estimate for WordPiece)."""
    if not isinstance(runner, TaskRunner):
        return lambda items: [sum(len(part) for part in item) + 2 for item in items]
    # A private copy with no truncation: counting long contexts must see all their tokens,
    # and the runner's own tokenizer must not be reconfigured while others encode.
    tokenizer: Tokenizer = runner.tokenizer.fresh()
    tokenizer.no_truncation()
    tokenizer.no_padding()
    # A single text is cut at the model's maximum length; a QA pair is windowed, so its
    # whole length counts.
    cap = runner.tokenizer.max_length if not isinstance(runner, QuestionAnswerer) else None

    def count(items: list[Item]) -> list[int]:
        inputs: list[Any] = [item[0] if len(item) == 1 else item for item in items]
        lengths = [len(encoding.ids) for encoding in tokenizer.encode_batch(inputs)]
        return [min(n, cap) for n in lengths] if cap else lengths

    return count


__all__ = [
    "BatchReport",
    "BatcherOptions",
    "DynamicBatcher",
    "call_items",
    "options_key",
    "run_items",
    "run_merged",
]
