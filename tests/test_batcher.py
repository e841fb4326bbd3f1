"""Dynamic batching: merged runs give each caller exactly its own results, errors stay with
their caller, the queue is bounded, and closing leaves no thread behind."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import bertrt
from bertrt.batcher import BatcherOptions, BatchReport, DynamicBatcher
from bertrt.errors import BatcherClosedError, BertrtError, ConfigError, InputError, OverloadedError, RunnerError

pytestmark = pytest.mark.filterwarnings("ignore:The qa head")

TEXTS = [
    "i love paris",
    "the film was very bad",
    "what is the capital of france? " * 10,
    "a",
    "the plot of the movie is good and the actors are great",
    "",
    "paris",
    "the immune system is a body system which has cells",
]
CONTEXT = "paris is the capital of france. the immune system is a body system which has cells. "


class FakeRunner:
    """Upper-cases texts; records each run's texts; can be held at a gate or fail on 'bad'."""

    def __init__(self) -> None:
        self.runs: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, texts: Sequence[str], *, suffix: str = "") -> list[str]:
        self.started.set()
        self.gate.wait(10)
        self.runs.append(list(texts))
        if "bad" in texts:
            raise InputError("'bad' is not allowed; send another text.")
        return [t.upper() + suffix for t in texts]


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> bertrt.Bundle:
    return bertrt.load(tiny_bundle, device="cpu").load_all()


@pytest.fixture
def reports() -> list[BatchReport]:
    return []


@pytest.fixture
def fake() -> Iterator[FakeRunner]:
    runner = FakeRunner()
    yield runner
    runner.gate.set()


def batcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("bertrt-")]


def hammer(batcher: DynamicBatcher[object], calls: list[tuple[tuple[object, ...], dict[str, object]]]) -> list[object]:
    """Submit every call from its own thread at about the same moment; results in call order."""
    barrier = threading.Barrier(len(calls))

    def one(call: tuple[tuple[object, ...], dict[str, object]]) -> object:
        barrier.wait()
        return batcher(*call[0], **call[1])

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def test_concurrent_embeddings_equal_direct_calls(bundle: bertrt.Bundle, reports: list[BatchReport]) -> None:
    options = BatcherOptions(max_batch_size=64, max_wait_ms=50)
    with DynamicBatcher(bundle.embedder, options, on_batch=reports.append) as batcher:
        calls = [((TEXTS[i : i + 1 + i % 3],), {"pooling": "mean", "normalize": True}) for i in range(len(TEXTS))]
        results = hammer(batcher, calls)  # type: ignore[arg-type]
    for (inputs, kwargs), got in zip(calls, results, strict=True):
        expected = bundle.embedder(*inputs, **kwargs)  # type: ignore[arg-type]
        assert len(got) == len(expected)  # type: ignore[arg-type]
        for g, e in zip(got, expected, strict=True):  # type: ignore[call-overload]
            assert g.tokens == e.tokens
            np.testing.assert_allclose(g.vector, e.vector, rtol=1e-5, atol=1e-6)
    assert max(r.calls for r in reports) > 1, "no two calls were merged"
    assert sum(r.items for r in reports) == sum(len(c[0][0]) for c in calls)


def test_concurrent_classifications_and_answers_equal_direct_calls(bundle: bertrt.Bundle) -> None:
    options = BatcherOptions(max_wait_ms=20)
    with DynamicBatcher(bundle.classifier, options) as classify, DynamicBatcher(bundle.qa, options) as qa:
        got = hammer(classify, [((t,), {"top_k": 2}) for t in TEXTS])  # type: ignore[arg-type]
        questions = ["what is the capital?", "what has cells?", "who?"]
        contexts = [CONTEXT * 3, CONTEXT, "the actors"]
        answers = hammer(qa, [((q, c), {"top_k": 2}) for q, c in zip(questions, contexts, strict=True)])  # type: ignore[arg-type]
    assert [r[0].to_dict() for r in got] == [r.to_dict() for r in bundle.classifier(TEXTS, top_k=2)]  # type: ignore[index]
    direct = bundle.qa(questions, contexts, top_k=2)
    assert [a[0].to_dict() for a in answers] == [r.to_dict() for r in direct]  # type: ignore[index]


def test_batches_respect_size_and_token_limits(fake: FakeRunner, reports: list[BatchReport]) -> None:
    fake.gate.clear()
    options = BatcherOptions(max_batch_size=4, max_batch_tokens=10, max_wait_ms=0)
    # One token per character (plus two): "ab" costs 4, so at most two fit the budget.
    with DynamicBatcher(fake, options, on_batch=reports.append) as batcher:
        blocker = batcher.submit("first")
        assert fake.started.wait(5)
        futures = [batcher.submit(["x"] * 3), batcher.submit(["x"] * 2)] + [batcher.submit("ab") for _ in range(3)]
        fake.gate.set()
        assert blocker.result(5) == ["FIRST"]
        assert [f.result(5) for f in futures] == [["X"] * 3, ["X"] * 2, ["AB"], ["AB"], ["AB"]]
    assert [len(run) for run in fake.runs] == [1, 3, 3, 2]
    assert all(r.items <= 4 and (r.tokens <= 10 or r.calls == 1) for r in reports)


def test_calls_with_other_options_are_not_merged(fake: FakeRunner) -> None:
    fake.gate.clear()
    with DynamicBatcher(fake, BatcherOptions(max_wait_ms=0)) as batcher:
        blocker = batcher.submit("hold")
        assert fake.started.wait(5)
        plain = [batcher.submit("a"), batcher.submit("b")]
        marked = batcher.submit("c", suffix="!")
        fake.gate.set()
        blocker.result(5)
        assert [f.result(5) for f in plain] == [["A"], ["B"]] and marked.result(5) == ["C!"]
    assert fake.runs == [["hold"], ["a", "b"], ["c"]]


def test_a_bad_input_fails_only_its_caller(fake: FakeRunner) -> None:
    fake.gate.clear()
    with DynamicBatcher(fake, BatcherOptions(max_wait_ms=0)) as batcher:
        blocker = batcher.submit("hold")
        assert fake.started.wait(5)
        good, bad, other = batcher.submit("a"), batcher.submit(["x", "bad"]), batcher.submit("b")
        fake.gate.set()
        blocker.result(5)
        assert good.result(5) == ["A"] and other.result(5) == ["B"]
        with pytest.raises(InputError, match="'bad' is not allowed"):
            bad.result(5)
    # The merged run failed, then each call ran alone.
    assert fake.runs[1] == ["a", "x", "bad", "b"] and fake.runs[2:] == [["a"], ["x", "bad"], ["b"]]


def test_invalid_inputs_are_refused_before_queueing(bundle: bertrt.Bundle) -> None:
    with DynamicBatcher(bundle.classifier) as classify, DynamicBatcher(bundle.qa) as qa:
        with pytest.raises(InputError, match="#1 is int"):
            classify(["fine", 3])  # type: ignore[list-item]
        with pytest.raises(InputError, match="one context per question"):
            qa(["q1", "q2"], ["only one context"])
        with pytest.raises(InputError, match="plain values"):
            classify("text", top_k=[1])
        with pytest.raises(InputError, match="top_k must be a positive integer"):
            classify("text", top_k=0)  # reaches the runner, fails in the worker
        assert classify([]) == [] and classify.queue_depth == 0


def test_a_full_queue_refuses_new_calls(fake: FakeRunner) -> None:
    fake.gate.clear()
    with DynamicBatcher(fake, BatcherOptions(max_queue=2, max_wait_ms=0)) as batcher:
        running = batcher.submit("running")
        assert fake.started.wait(5)
        queued = [batcher.submit("q1"), batcher.submit("q2")]
        assert batcher.queue_depth == 2
        with pytest.raises(OverloadedError, match="max_queue"):
            batcher.submit("one too many")
        fake.gate.set()
        assert running.result(5) == ["RUNNING"] and [f.result(5) for f in queued] == [["Q1"], ["Q2"]]
        assert batcher("fits again") == ["FITS AGAIN"]


def test_a_runner_that_loses_results_is_a_runner_error() -> None:
    def drops_the_last(texts: Sequence[str]) -> list[str]:
        return list(texts)[:-1]

    batcher = DynamicBatcher(drops_the_last, BatcherOptions(max_wait_ms=0))
    with batcher, pytest.raises(RunnerError, match="returned 1 results for 2 inputs; a runner must return one result"):
        batcher(["a", "b"])
    assert issubclass(RunnerError, BertrtError)


def test_close_drains_queued_calls_and_joins_its_threads(fake: FakeRunner) -> None:
    fake.gate.clear()
    batcher = DynamicBatcher(fake, BatcherOptions(max_wait_ms=0, workers=2), name="drain")
    assert len(batcher_threads()) >= 2
    futures = [batcher.submit(text) for text in ("a", "b", "c")]
    threading.Timer(0.05, fake.gate.set).start()
    batcher.close()
    assert [f.result(0) for f in futures] == [["A"], ["B"], ["C"]]
    assert not [t for t in batcher_threads() if "drain" in t.name]
    with pytest.raises(BatcherClosedError, match="closed"):
        batcher.submit("late")


def test_close_without_drain_fails_queued_calls(fake: FakeRunner) -> None:
    fake.gate.clear()
    batcher = DynamicBatcher(fake, BatcherOptions(max_wait_ms=0), name="abort")
    running = batcher.submit("running")
    assert fake.started.wait(5)
    queued = batcher.submit("queued")
    threading.Timer(0.05, fake.gate.set).start()
    batcher.close(drain=False)
    assert running.result(0) == ["RUNNING"]  # a batch already running completes
    with pytest.raises(BatcherClosedError, match="closed before this call ran"):
        queued.result(0)
    assert not [t for t in batcher_threads() if "abort" in t.name]


def test_asyncio_callers_are_merged(fake: FakeRunner, reports: list[BatchReport]) -> None:
    async def main() -> list[list[str]]:
        with DynamicBatcher(fake, BatcherOptions(max_wait_ms=50), on_batch=reports.append) as batcher:
            return await asyncio.gather(*(batcher.acall(f"t{i}") for i in range(20)))

    assert asyncio.run(main()) == [[f"T{i}"] for i in range(20)]
    assert len(fake.runs) < 20 and sum(r.items for r in reports) == 20


def test_a_cancelled_coroutine_is_dropped_from_its_batch(fake: FakeRunner) -> None:
    fake.gate.clear()

    async def main() -> list[str]:
        with DynamicBatcher(fake, BatcherOptions(max_wait_ms=0)) as batcher:
            blocker = asyncio.ensure_future(batcher.acall("hold"))
            while not fake.started.is_set():
                await asyncio.sleep(0.001)
            doomed = asyncio.ensure_future(batcher.acall("cancelled"))
            kept = asyncio.ensure_future(batcher.acall("kept"))
            await asyncio.sleep(0.01)
            doomed.cancel()
            await asyncio.sleep(0.01)  # the cancellation reaches the batcher's future on the loop
            fake.gate.set()
            await blocker
            return await kept

    assert asyncio.run(main()) == ["KEPT"]
    assert ["cancelled"] not in fake.runs and all("cancelled" not in run for run in fake.runs)


def test_waits_at_most_max_wait_for_company(fake: FakeRunner) -> None:
    with DynamicBatcher(fake, BatcherOptions(max_wait_ms=30)) as batcher:
        started = time.perf_counter()
        assert batcher("alone") == ["ALONE"]
        waited = time.perf_counter() - started
    assert 0.025 <= waited < 1.0


def test_token_counts_come_from_the_tokenizer(bundle: bertrt.Bundle, reports: list[BatchReport]) -> None:
    with DynamicBatcher(bundle.classifier, BatcherOptions(max_wait_ms=0), on_batch=reports.append) as classify:
        classify(["i love paris", "what is the capital of france? " * 40])
    expected = min(len(bundle.classifier.tokenizer.encode(["what is the capital of france? " * 40])[0]), 64)
    assert reports[0].tokens == 5 + expected


@pytest.mark.parametrize(
    "field, value",
    [("max_batch_size", 0), ("max_batch_tokens", -1), ("max_queue", 1.5), ("workers", True), ("max_wait_ms", -1)],
)
def test_options_are_validated(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        BatcherOptions(**{field: value})  # type: ignore[arg-type]


def test_calls_over_the_runtime_limits_are_refused_at_admission(tiny_bundle: Path) -> None:
    limits = bertrt.RuntimeOptions(max_chars_per_text=20, max_context_chars=30, max_texts_per_call=4)
    small = bertrt.load(tiny_bundle, device="cpu", options=limits)
    with DynamicBatcher(small.classifier, BatcherOptions(max_batch_size=4)) as classify:
        with pytest.raises(InputError, match="max_chars_per_text"):
            classify.submit("x" * 21)
        with pytest.raises(InputError, match="max_texts_per_call"):
            classify.submit(["a"] * 5)
        assert classify.queue_depth == 0 and len(classify(["a"] * 4)) == 4
    with (
        DynamicBatcher(small.qa, BatcherOptions(max_batch_size=4)) as qa,
        pytest.raises(InputError, match="max_context_chars"),
    ):
        qa.submit("short question", "c" * 31)
    with pytest.raises(ConfigError, match="max_texts_per_call"):
        DynamicBatcher(small.classifier, BatcherOptions(max_batch_size=5))


def test_the_queue_observer_sees_every_depth_in_order(fake: FakeRunner) -> None:
    depths: list[int] = []
    fake.gate.clear()
    batcher = DynamicBatcher(fake, BatcherOptions(max_queue=2, max_wait_ms=0), on_queue=depths.append)
    running = batcher.submit("running")
    assert fake.started.wait(5)
    queued = [batcher.submit("q1"), batcher.submit("q2")]
    with pytest.raises(OverloadedError):
        batcher.submit("refused")
    threading.Timer(0.05, fake.gate.set).start()
    batcher.close(drain=False)
    assert running.result(0) == ["RUNNING"] and all(f.exception(0) for f in queued)
    # queued, taken by the worker, two queued behind it, both dropped by close
    assert depths == [1, 0, 1, 2, 0]


def test_a_failing_observer_does_not_stop_the_worker(fake: FakeRunner) -> None:
    def broken(report: BatchReport | int) -> None:
        raise ValueError("observer bug")

    with DynamicBatcher(fake, BatcherOptions(max_wait_ms=0), on_batch=broken, on_queue=broken) as batcher:
        assert batcher("one") == ["ONE"] and batcher("two") == ["TWO"]
