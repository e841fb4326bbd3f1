"""PNG plots of a results dict: W1 latency, W2/W3 throughput, the two scaling curves, the
physical limit and the footprint, one panel each, every system on each panel.

matplotlib comes with the ``export`` extra; it is imported only when a plot is asked for.

Example::

    write_plots(results, Path("benchmarks/results/cpu-minilm.png"))
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bertrt.bench.config import ALL_SYSTEMS
from bertrt.bench.report import FOOTPRINT_STACKS

from bertrt.errors import ConfigError

Figures = Mapping[str, Mapping[str, Mapping[str, Any]]]


def write_plots(results: Mapping[str, Any], path: Path) -> Path:
    """Draw the results into one PNG at ``path`` (2 x 3 panels); returns ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never open a window
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("--plot needs matplotlib; pip install matplotlib (or 'bertrt[export]').") from exc
    figures: Figures = results.get("figures", {})
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    _bars(axes[0, 0], figures, "w1.", "p50_ms", "W1 single request: p50 latency (ms, lower is better)")
    _bars(
        axes[0, 1],
        figures,
        ("w2.classify", "w2.embed", "w3.qa"),
        "items_per_s",
        "W2 stream / W3 QA: items per second (higher is better)",
        exact=True,
    )
    _curve(axes[0, 2], figures, "scaling.batch.", "batch", "Forward latency vs batch size (seq {seq})")
    _curve(axes[1, 0], figures, "scaling.sequence.", "seq", "Forward latency vs sequence length (batch 1)")
    _physical(axes[1, 1], results.get("gemm") or {})
    _footprint(axes[1, 2], results.get("footprint") or {})
    machine = results.get("machine", {})
    shown = ("avx512_vnni", "avx512_bf16", "amx")
    features = ", ".join(f for f in machine.get("cpu_features", []) if f.startswith(shown))
    fig.suptitle(
        f"bertrt benchmark, {machine.get('cpu_model', '?')} ({machine.get('usable_cores', '?')} cores"
        f"{'; ' + features if features else ''}"
        f"{', GPU ' + machine['gpu'] if machine.get('gpu') else ''}), {results.get('created', '')}"
        f"{'  [smoke run]' if results.get('smoke') else ''}"
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _systems(figures: Figures, keys: list[str]) -> list[str]:
    present = {name for key in keys for name in figures[key]}
    return [name for name in ALL_SYSTEMS if name in present]


def _bars(
    ax: Any, figures: Figures, prefix: str | tuple[str, ...], field: str, title: str, exact: bool = False
) -> None:
    keys = [k for k in figures if (k in prefix if exact else k.startswith(prefix))]
    ax.set_title(title, fontsize=10)
    if not keys:
        return _empty(ax)
    systems = _systems(figures, keys)
    width = 0.8 / max(len(systems), 1)
    for i, name in enumerate(systems):
        values = [figures[k].get(name, {}).get(field, 0.0) for k in keys]
        ax.bar([x + i * width for x in range(len(keys))], values, width, label=name, color=_color(name))
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(keys))], keys, fontsize=8)
    ax.set_yscale("log")
    ax.legend(fontsize=7)


def _curve(ax: Any, figures: Figures, prefix: str, axis: str, title: str) -> None:
    keys = [k for k in figures if k.startswith(prefix)]
    if not keys:
        ax.set_title(title.format(seq="?"), fontsize=10)
        return _empty(ax)
    any_point = next(iter(figures[keys[0]].values()))
    ax.set_title(title.format(seq=any_point.get("seq")), fontsize=10)
    for name in _systems(figures, keys):
        points = sorted((figures[k][name][axis], figures[k][name]["p50_ms"]) for k in keys if name in figures[k])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name, color=_color(name))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel("p50 ms per forward")
    ax.legend(fontsize=7)


def _physical(ax: Any, gemm: Mapping[str, Any]) -> None:
    ax.set_title("Physical limit: GFLOP/s at W2's biggest batch vs fp32 GEMM", fontsize=10)
    rates = gemm.get("peak_batch", {})
    if not gemm:
        return _empty(ax)
    names = [n for n in ALL_SYSTEMS if n in rates]
    ax.bar(names, [rates[n]["best_gflops"] for n in names], color="tab:blue", label="fastest forward")
    ax.scatter(names, [rates[n]["gflops"] for n in names], color="black", zorder=3, label="median forward")
    ax.axhline(
        gemm["peak_gflops"], color="tab:red", linestyle="--", label=f"GEMM peak {gemm['peak_gflops']:.0f} GFLOP/s"
    )
    ax.axhline(0.7 * gemm["peak_gflops"], color="tab:orange", linestyle=":", label="70% of peak")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=7)


def _footprint(ax: Any, footprint: Mapping[str, Any]) -> None:
    ax.set_title("Peak RSS serving W1 with all three models (MiB)", fontsize=10)
    stacks = [s for s in FOOTPRINT_STACKS if "peak_rss_mb" in footprint.get(s, {})]
    if not stacks:
        return _empty(ax)
    ax.bar(
        stacks,
        [footprint[s]["peak_rss_mb"] for s in stacks],
        color=["tab:gray" if s == "torch" else "tab:green" for s in stacks],
    )
    if "import_bertrt_s" in footprint:
        ax.text(
            0.02, 0.95, f"import bertrt: {footprint['import_bertrt_s'] * 1e3:.0f} ms", transform=ax.transAxes, va="top"
        )


def _color(system: str) -> Any:
    """One colour per system, the same on every panel (more systems than the default cycle)."""
    import matplotlib

    index = ALL_SYSTEMS.index(system) if system in ALL_SYSTEMS else len(ALL_SYSTEMS)
    return matplotlib.colormaps["tab20"](index % 20)


def _empty(ax: Any) -> None:
    ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
