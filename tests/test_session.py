"""The session layer on small hand-built ONNX graphs: IO binding, buffers, feeding, providers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertrt import providers
from bertrt.errors import BundleError, ConfigError, DeviceError
from bertrt.options import RuntimeOptions, coerce_enum
from bertrt.providers import CPU_PROVIDER, CUDA_PROVIDER, cuda_provider_options
from bertrt.session import OrtSession
from bertrt.types import Device, Precision

WEIGHTS = np.array([[1.0, -2.0, 0.5, 3.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ids -> hidden = ids * mask * W (batch, seq, 4); pooled = max over seq (batch, 4);
    nonzero = positions of the mask (2, n): a shape no input axis determines."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    axes = ["batch", "seq"]
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
        helper.make_node("Cast", ["masked"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["as_float", "last_axis"], ["column"]),
        helper.make_node("MatMul", ["column", "weights"], ["hidden"]),
        helper.make_node("ReduceMax", ["hidden", "seq_axis"], ["pooled"], keepdims=0),
        helper.make_node("NonZero", ["attention_mask"], ["nonzero"]),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "probe",
            [
                helper.make_tensor_value_info("input_ids", TensorProto.INT64, axes),
                helper.make_tensor_value_info("attention_mask", TensorProto.INT64, axes),
            ],
            [
                helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [*axes, 4]),
                helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 4]),
                helper.make_tensor_value_info("nonzero", TensorProto.INT64, [2, None]),
            ],
            [
                helper.make_tensor("weights", TensorProto.FLOAT, [1, 4], WEIGHTS.ravel()),
                helper.make_tensor("last_axis", TensorProto.INT64, [1], [2]),
                helper.make_tensor("seq_axis", TensorProto.INT64, [1], [1]),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("graph") / "model.onnx"
    onnx.save(model, str(path))
    return path


def feeds(batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (np.arange(seq)[None, :] < rng.integers(1, seq + 1, size=(batch, 1))).astype(np.int64)
    return {"input_ids": rng.integers(1, 100, size=(batch, seq)), "attention_mask": mask}


def expected(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    hidden = (f["input_ids"] * f["attention_mask"]).astype(np.float32)[..., None] * WEIGHTS[0]
    return {
        "hidden": hidden,
        "pooled": hidden.max(axis=1),
        "nonzero": np.stack(np.nonzero(f["attention_mask"])),
    }


BOUND = RuntimeOptions(io_binding=True)


@pytest.fixture(scope="module")
def bound(graph: Path) -> OrtSession:
    return OrtSession(graph, Device.CPU, BOUND)


@pytest.fixture(scope="module")
def plain(graph: Path) -> OrtSession:
    return OrtSession(graph, Device.CPU, RuntimeOptions(io_binding=False))


def test_maps_are_built_at_load(bound: OrtSession) -> None:
    assert list(bound.inputs) == ["input_ids", "attention_mask"]
    assert bound.inputs["input_ids"].dtype == np.int64
    assert bound.outputs["hidden"].shape == ("batch", "seq", 4)
    assert bound.outputs["pooled"].dtype == np.float32
    assert bound.provider == CPU_PROVIDER and bound.io_binding


@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (2, 3), (5, 7), (3, 2)])
def test_io_binding_equals_plain_run_and_the_math(
    bound: OrtSession, plain: OrtSession, batch: int, seq: int
) -> None:
    f = feeds(batch, seq, seed=batch * 10 + seq)
    with_binding, without = bound.run(f), plain.run(f)
    for name, value in expected(f).items():
        np.testing.assert_array_equal(with_binding[name], value)
        np.testing.assert_array_equal(without[name], value)


def test_the_cpu_runs_plain_session_run_unless_binding_is_forced(graph: Path) -> None:
    default = OrtSession(graph, Device.CPU)
    assert not default.io_binding
    f = feeds(2, 3)
    np.testing.assert_array_equal(default.run(f)["hidden"], expected(f)["hidden"])
    assert default.buffer_capacity() == {}  # no binding, no buffers
    assert OrtSession(graph, Device.CPU, RuntimeOptions(io_binding=False)).io_binding is False


def test_buffers_grow_only_for_larger_requests_and_results_are_not_aliased(graph: Path) -> None:
    session = OrtSession(graph, Device.CPU, BOUND)
    assert session.buffer_capacity() == {}
    big, small, bigger = feeds(3, 4, 1), feeds(1, 2, 2), feeds(4, 6, 3)
    first = session.run(big)
    assert session.buffer_capacity() == {"hidden": 3 * 4 * 4, "pooled": 3 * 4}
    second = session.run(small)
    assert session.buffer_capacity() == {"hidden": 3 * 4 * 4, "pooled": 3 * 4}
    session.run(bigger)
    assert session.buffer_capacity() == {"hidden": 4 * 6 * 4, "pooled": 4 * 4}
    # Earlier results are copies the caller owns, not views of the reused buffers.
    np.testing.assert_array_equal(first["hidden"], expected(big)["hidden"])
    np.testing.assert_array_equal(second["pooled"], expected(small)["pooled"])


def test_only_declared_inputs_are_fed_and_cast(bound: OrtSession) -> None:
    f = feeds(2, 3)
    extra = {**f, "token_type_ids": np.zeros((2, 3), dtype=np.int64)}
    np.testing.assert_array_equal(bound.run(extra)["hidden"], expected(f)["hidden"])
    as_int32 = {name: value.astype(np.int32) for name, value in f.items()}
    np.testing.assert_array_equal(bound.run(as_int32)["pooled"], expected(f)["pooled"])


def test_a_missing_declared_input_names_it(bound: OrtSession) -> None:
    with pytest.raises(BundleError, match="'attention_mask'"):
        bound.run({"input_ids": np.ones((1, 2), dtype=np.int64)})


def counting_runs(session: OrtSession, shrinks: list[bool] | None = None) -> list[int]:
    """Patch ``session`` to record the rows of every ONNX Runtime run it makes (and, in
    ``shrinks``, whether the run hands the arena back)."""
    rows: list[int] = []
    run = session._run

    def counted(inputs: dict[str, np.ndarray], names: list[str], options: Any) -> dict[str, np.ndarray]:
        rows.append(next(iter(inputs.values())).shape[0])
        if shrinks is not None:
            shrinks.append(options is session._shrink_options)
        return run(inputs, names, options)

    session._run = counted  # type: ignore[method-assign]
    return rows


@pytest.mark.parametrize("binding", [False, True])
def test_a_large_cpu_run_is_cut_into_row_chunks_with_the_same_outputs(graph: Path, binding: bool) -> None:
    session = OrtSession(graph, Device.CPU, RuntimeOptions(cpu_chunk_tokens=6, io_binding=binding))
    rows = counting_runs(session)
    f = feeds(5, 3)  # 15 tokens > 6: chunks of 6 // 3 = 2 rows
    got = session.run(f, ["hidden", "pooled"])
    assert rows == [2, 2, 1]
    for name in ("hidden", "pooled"):
        np.testing.assert_array_equal(got[name], expected(f)[name])
        assert got[name].flags.c_contiguous and got[name].flags.owndata
    # "nonzero" is not batch-major: asking for it runs the batch whole.
    rows.clear()
    whole = session.run(f)
    assert rows == [5]
    np.testing.assert_array_equal(whole["nonzero"], expected(f)["nonzero"])


@pytest.mark.parametrize(
    ("chunk_tokens", "batch", "seq", "rows"),
    [
        (6, 5, 3, 2),  # 15 tokens: chunks of two rows
        (6, 2, 3, 0),  # 6 tokens: within the budget, whole
        (6, 1, 40, 0),  # one row is never cut, however long
        (6, 4, 10, 1),  # a row longer than the budget: one row per chunk
        (1024, 8, 384, 2),  # QA windows: two per chunk
        (1024, 8, 512, 0),  # rows past LONGEST_ROW_TO_CUT run whole
        (0, 64, 64, 0),  # chunking off
        (1024, 64, 128, 8),  # the default budget on a 64 x 128 forward
    ],
)
def test_chunk_rows_follow_the_token_budget(graph: Path, chunk_tokens: int, batch: int, seq: int, rows: int) -> None:
    session = OrtSession(graph, Device.CPU, RuntimeOptions(cpu_chunk_tokens=chunk_tokens))
    assert session.chunk_rows(feeds(batch, seq), ["hidden", "pooled"]) == rows


def test_a_cut_call_is_one_run_for_the_arena_policy(graph: Path) -> None:
    session = OrtSession(graph, Device.CPU, RuntimeOptions(cpu_chunk_tokens=8))
    policy = session.arena_policy
    assert policy is not None
    policy.small_run_tokens = 8
    shrinks: list[bool] = []
    rows = counting_runs(session, shrinks)
    f = feeds(8, 4)  # 32 tokens: a large call, cut into four chunks of two rows
    session.run(f, ["hidden"])  # an isolated large call: its last chunk hands the arena back
    assert rows == [2, 2, 2, 2] and shrinks == [False, False, False, True]
    session.run(f, ["hidden"])  # a stream of large calls keeps it
    assert shrinks[4:] == [False] * 4 and policy.holds_large_run


def test_row_chunks_are_off_by_option_and_refused_below_zero() -> None:
    assert RuntimeOptions().cpu_chunk_tokens == 1024
    with pytest.raises(ConfigError, match="cpu_chunk_tokens"):
        RuntimeOptions(cpu_chunk_tokens=-1)


def test_each_thread_gets_its_own_binding(graph: Path, concurrently: Any) -> None:
    session = OrtSession(graph, Device.CPU, BOUND)
    requests = [feeds(1 + i % 4, 2 + i % 5, seed=i) for i in range(24)]
    failures: list[str] = []
    capacities: list[dict[str, int]] = []

    def work(offset: int) -> None:
        for i in range(60):
            f = requests[(i + offset) % len(requests)]
            if not np.array_equal(session.run(f)["hidden"], expected(f)["hidden"]):
                failures.append(f"thread {offset} request {i}")
        capacities.append(session.buffer_capacity())

    concurrently(work, 8)
    assert failures == []
    assert len(capacities) == 8 and all(c["hidden"] == 4 * 6 * 4 for c in capacities)
    assert session.buffer_capacity() == {}  # the main thread never ran


def test_cpu_choice_is_logged_with_its_reason(graph: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bertrt"):
        OrtSession(graph, Device.CPU)
    [record] = [r for r in caplog.records if r.name == "bertrt"]
    assert "model.onnx runs on CPUExecutionProvider" in record.getMessage()
    assert "--device cpu" in record.getMessage()


def test_auto_runs_somewhere_and_says_why(graph: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bertrt"):
        session = OrtSession(graph, Device.AUTO)
    message = caplog.records[-1].getMessage()
    assert session.provider in message
    if session.provider == CPU_PROVIDER:
        assert "fell back to the CPU because" in message
    np.testing.assert_array_equal(session.run(feeds(2, 2))["pooled"], expected(feeds(2, 2))["pooled"])


def test_cuda_without_a_working_provider_is_one_clear_error(graph: Path) -> None:
    if OrtSession(graph, Device.AUTO).provider != CPU_PROVIDER:
        pytest.skip("CUDA works on this machine")
    for _ in range(2):  # the second attempt uses the remembered probe result
        with pytest.raises(
            DeviceError, match=r"--device cuda was asked for but .*; use --device auto or cpu"
        ):
            OrtSession(graph, Device.CUDA)


def test_a_file_onnx_runtime_cannot_parse_is_a_bundle_error(tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(BundleError, match="re-export"):
        OrtSession(broken, Device.CPU)


def test_session_options_follow_runtime_options(graph: Path) -> None:
    session = OrtSession(
        graph,
        Device.CPU,
        RuntimeOptions(graph_optimization="disabled", intra_op_threads=1, inter_op_threads=1),
    )
    f = feeds(2, 3)
    np.testing.assert_array_equal(session.run(f)["hidden"], expected(f)["hidden"])


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"graph_optimization": "max"}, "graph_optimization"),
        ({"intra_op_threads": -1}, "intra_op_threads"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_runtime_options_are_refused(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        RuntimeOptions(**changes)  # type: ignore[arg-type]


def test_presets_and_enum_coercion() -> None:
    assert RuntimeOptions.preset("compare").io_binding is False
    assert RuntimeOptions.preset("single-thread").intra_op_threads == 1
    with pytest.raises(ConfigError, match="default, single-thread, compare"):
        RuntimeOptions.preset("turbo")
    assert coerce_enum(Device, "cuda", "device") is Device.CUDA
    with pytest.raises(ConfigError, match="Unknown device 'gpu'; choose one of auto, cpu, cuda"):
        coerce_enum(Device, "gpu", "device")


def test_cuda_options_switch_tf32_off_for_every_file_but_fp16() -> None:
    assert cuda_provider_options(0, Precision.FP32) == {"device_id": "0", "use_tf32": "0"}
    assert cuda_provider_options(2, Precision.INT8) == {"device_id": "2", "use_tf32": "0"}
    assert cuda_provider_options(1, Precision.FP16) == {"device_id": "1"}


@pytest.mark.parametrize("precision", list(Precision))
def test_cuda_sessions_are_built_with_those_options(
    graph: Path, monkeypatch: pytest.MonkeyPatch, precision: Precision
) -> None:
    # No GPU here: the probe is told CUDA runs and the session factory records the providers
    # it is asked for, then builds a CPU session (so auto falls back, as on a broken GPU).
    asked: list[list[Any]] = []
    build = providers._new_session

    def recording(path: Path, so: Any, provider_list: list[Any]) -> Any:
        asked.append(provider_list)
        return build(path, so, [CPU_PROVIDER])

    monkeypatch.setattr(providers, "cuda_failure", lambda: None)
    monkeypatch.setattr(providers, "_new_session", recording)
    OrtSession(graph, Device.AUTO, RuntimeOptions(cuda_device_id=3), precision)
    assert asked[0] == [(CUDA_PROVIDER, cuda_provider_options(3, precision)), CPU_PROVIDER]


def test_a_runner_opens_its_cuda_session_with_its_variant_precision(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bertrt.embed import Embedder

    asked: list[Any] = []
    build = providers._new_session
    monkeypatch.setattr(providers, "cuda_failure", lambda: None)
    monkeypatch.setattr(
        providers, "_new_session", lambda path, so, p: asked.append(p[0]) or build(path, so, [CPU_PROVIDER])
    )
    for precision in (Precision.FP32, Precision.FP16):
        Embedder(tiny_bundle / "embedder", device="auto", precision=precision)
    assert [options.get("use_tf32") for _, options in asked] == ["0", None]
