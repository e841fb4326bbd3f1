"""What one benchmark run measures: systems, workloads, sizes and repetition counts.

Two presets cover the common cases: ``full`` (the published figures, sized to finish in
about a quarter of an hour on a 2-core CPU) and ``smoke`` (a few iterations of everything,
so the harness cannot rot; the test suite runs it on a tiny bundle).

Example::

    config = BenchConfig.preset("smoke", bundle=Path("models/minilm"))
    config = dataclasses.replace(config, systems=("ort", "bertrt-fp32"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertrt.errors import ConfigError
from bertrt.types import Device

# Every system the harness knows, baselines first (the order of tables and plots).
# sentence-transformers' three ways to embed (PyTorch, its ONNX backend, its dynamic int8
# export) are the embedder's peers; torch-bf16 is PyTorch under bf16 autocast, the fast path
# on CPUs with AMX or AVX-512 bf16.
SENTENCE_TRANSFORMERS_SYSTEMS = ("st-torch", "st-onnx", "st-int8")
BASELINES = (
    "torch",
    "torch-pipeline",
    "optimum",
    "optimum-pipeline",
    "ort",
    *SENTENCE_TRANSFORMERS_SYSTEMS,
    "torch-bf16",
)
BERTRT_SYSTEMS = ("bertrt-fp32", "bertrt-int8", "bertrt-fp16")
ALL_SYSTEMS = BASELINES + BERTRT_SYSTEMS
# A second plain ONNX Runtime system with sessions of its own, run only when asked for: it
# makes the same calls as ``ort`` on the same file, so how far it lands from ``ort`` is how far
# two identical systems drift apart in that run, the yardstick for the zero-overhead figures.
TWIN_SYSTEM = "ort-twin"
KNOWN_SYSTEMS = ALL_SYSTEMS + (TWIN_SYSTEM,)
# Systems that need torch, transformers or optimum: imported only when one is requested.
TORCH_SYSTEMS = frozenset({"torch", "torch-pipeline", "optimum", "optimum-pipeline", "torch-bf16"})

WORKLOADS = ("w1", "w2", "w3", "scaling", "gemm", "footprint")
DEFAULT_SQUAD = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "squad" / "dev-v1.1.heldout8.json"


@dataclass(frozen=True)
class BenchConfig:
    """Everything one run needs; validated at construction.

    ``systems`` and ``workloads`` select what runs (names from :data:`KNOWN_SYSTEMS` and
    :data:`WORKLOADS`; by default every system but the opt-in :data:`TWIN_SYSTEM`); systems
    whose libraries or variant files are absent are skipped with a note. ``threads`` is the
    intra-op thread count given to every engine.
    Latency figures take ``warmup`` untimed calls, then up to ``repeats`` timed calls,
    stopping early (after at least ``min_repeats``) once ``max_seconds`` have passed. They
    are measured in ``latency_rounds`` rounds, the systems taking turns in each (the order
    reversed every other round), and each round has its share of the repeats and seconds
    (and its own warm-up): a slow stretch of a shared machine then falls on every system
    rather than on whichever held the figure at the time.

    ``sessions`` opens every system that many times, each copy with sessions of its own, and
    the latency rounds take the copies in turn (round ``r`` is served by copy
    ``r % sessions``). Two identical ONNX Runtime sessions can run a few percent apart for
    their whole life, so a figure from one session per system compares the two sessions'
    luck as much as the systems; over several it compares the systems. Throughput figures
    use the first copy.
    """

    bundle: Path
    systems: tuple[str, ...] = ALL_SYSTEMS
    workloads: tuple[str, ...] = WORKLOADS
    device: Device = Device.CPU
    threads: int = 2
    batch_size: int = 32
    warmup: int = 5
    repeats: int = 200
    min_repeats: int = 3
    max_seconds: float = 3.0
    latency_rounds: int = 3
    sessions: int = 1
    stream_texts: int = 2000
    # W2's truncation length (tokens, special tokens included), as the workload specifies it.
    stream_max_tokens: int = 256
    stream_passes: int = 1
    qa_questions: int = 500
    squad_path: Path = DEFAULT_SQUAD
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    scaling_seq: int = 128
    seq_lengths: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    gemm_size: int = 2048
    seed: int = 0
    smoke: bool = False

    def __post_init__(self) -> None:
        _known("system", self.systems, KNOWN_SYSTEMS)
        _known("workload", self.workloads, WORKLOADS)
        positive = (
            "threads",
            "batch_size",
            "repeats",
            "min_repeats",
            "latency_rounds",
            "sessions",
            "stream_texts",
            "stream_max_tokens",
            "stream_passes",
            "qa_questions",
            "scaling_seq",
            "gemm_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be 1 or more, got {getattr(self, name)}.")
        if self.sessions > self.latency_rounds:
            raise ConfigError(
                f"sessions ({self.sessions}) must not exceed the rounds ({self.latency_rounds}): each copy of a "
                "system serves whole rounds; raise --rounds or lower --sessions."
            )
        if self.warmup < 0 or self.max_seconds <= 0:
            raise ConfigError("warmup must be 0 or more and max_seconds above 0.")
        for name in ("batch_sizes", "seq_lengths"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise ConfigError(f"{name} must list positive sizes, got {values!r}.")

    @classmethod
    def preset(cls, name: str, bundle: Path, **overrides: object) -> BenchConfig:
        """``full`` (published figures) or ``smoke`` (seconds, any bundle), with overrides."""
        presets: dict[str, dict[str, object]] = {
            "full": {},
            "smoke": dict(
                smoke=True,
                warmup=1,
                repeats=3,
                min_repeats=2,
                max_seconds=0.5,
                latency_rounds=2,
                stream_texts=48,
                qa_questions=4,
                batch_sizes=(1, 4),
                scaling_seq=32,
                seq_lengths=(16, 64),
                gemm_size=256,
            ),
        }
        if name not in presets:
            raise ConfigError(f"Unknown benchmark preset {name!r}; choose one of {', '.join(presets)}.")
        return cls(bundle=Path(bundle), **{**presets[name], **overrides})  # type: ignore[arg-type]

    def wants(self, workload: str) -> bool:
        """Whether ``workload`` is part of this run."""
        return workload in self.workloads


def _known(what: str, chosen: tuple[str, ...], valid: tuple[str, ...]) -> None:
    unknown = [name for name in chosen if name not in valid]
    if unknown:
        raise ConfigError(f"Unknown {what} {', '.join(unknown)}; choose from {', '.join(valid)}.")
    if not chosen:
        raise ConfigError(f"Choose at least one {what} from {', '.join(valid)}.")
