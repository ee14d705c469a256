"""PNG plots of benchmark results (matplotlib, headless Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use("Agg"): the backend must be chosen first

from benchmarks.records import RequestRecord

__all__ = ["plot_latencies", "plot_ratios", "plot_sweep"]

_PANELS = (
    ("TTFT", lambda r: [r.ttft] if r.ttft is not None else []),
    ("TPOT", lambda r: [r.tpot] if r.tpot is not None else []),
    ("ITL", lambda r: r.itls),
    ("End-to-end latency", lambda r: [r.latency] if r.latency is not None else []),
)


def _ecdf(ax: Any, values: Sequence[float], label: str) -> None:
    ordered = sorted(values)
    n = len(ordered)
    ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=label)


def plot_latencies(
    series: Mapping[str, Sequence[RequestRecord]], path: Path, title: str = ""
) -> Path:
    """Cumulative distributions of TTFT, TPOT, ITL and E2E latency (ms), one line per series.

    A CDF reads the median and the tail at once, and several series overlay cleanly.
    """
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (name, pick) in zip(axes.flat, _PANELS, strict=True):
        plotted: list[float] = []
        for label, records in series.items():
            values = [v * 1000.0 for r in records if r.completed for v in pick(r)]
            if values:
                _ecdf(ax, values, f"{label} (n={len(values)})")
                plotted += values
        # A long tail (ITL stalls while other requests prefill) squeezes the body: log scale.
        if plotted and min(plotted) > 0 and max(plotted) > 10 * sorted(plotted)[len(plotted) // 2]:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(name)
        ax.set_xlabel("ms" if ax.get_xscale() == "linear" else "ms (log scale)")
        ax.set_ylabel("fraction of requests" if name != "ITL" else "fraction of gaps")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        for q in (0.5, 0.9, 0.99):
            ax.axhline(q, color="grey", lw=0.6, ls=":")
        if plotted:
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.text(0.5, 0.5, "no data (not streamed)", ha="center", transform=ax.transAxes)
    fig.suptitle(title or "Latency distributions")
    fig.tight_layout()
    return _save(fig, path)


def plot_sweep(
    series: Mapping[str, Sequence[tuple[float, Mapping[str, Any]]]],
    path: Path,
    xlabel: str = "concurrency",
    title: str = "",
) -> Path:
    """Output throughput, TTFT and TPOT (p50 solid, p99 dashed) against the load level."""
    fig, (thr, ttft, tpot) = plt.subplots(1, 3, figsize=(15, 4.5))
    for label, points in series.items():
        xs = [x for x, _ in points]
        line = thr.plot(xs, [s["output_throughput"] for _, s in points], marker="o", label=label)
        color = line[0].get_color()
        for ax, key in ((ttft, "ttft_ms"), (tpot, "tpot_ms")):
            for stat, style in (("p50", "-"), ("p99", "--")):
                ys = [(s.get(key) or {}).get(stat) for _, s in points]
                if any(y is not None for y in ys):
                    ax.plot(xs, ys, style, marker="o", color=color, label=f"{label} {stat}")
    for ax, name, unit in (
        (thr, "Output throughput", "tokens/s"),
        (ttft, "Time to first token", "ms"),
        (tpot, "Time per output token", "ms"),
    ):
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        if ax.lines:
            ax.legend(fontsize=8)
        xs_all = sorted({x for points in series.values() for x, _ in points})
        if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
    fig.suptitle(title or f"Load sweep over {xlabel}")
    fig.tight_layout()
    return _save(fig, path)


_RATIO_TICKS = (0.125, 0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 8.0)


def plot_ratios(
    ratios: Mapping[str, Mapping[str, float | None]],
    path: Path,
    title: str = "",
    metrics: Sequence[str] | None = None,
) -> Path:
    """Bars of A / B growing from parity (1.0) on a log scale, one colour per load point.

    On a log axis 0.5 and 2.0 sit equally far from 1, so "twice as slow" and "twice as fast"
    look alike. ``metrics`` picks and orders the rows (default: all, in order).
    """
    points = list(ratios)
    metrics = list(metrics or dict.fromkeys(m for p in points for m in ratios[p]))
    metrics = [m for m in metrics if any(ratios[p].get(m) for p in points)]
    height = 0.8 / max(1, len(points))
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(metrics) * len(points) ** 0.5 + 1.6))
    spread = 0.1
    for i, point in enumerate(points):
        ys = [j + i * height for j in range(len(metrics))]
        found = [ratios[point].get(m) for m in metrics]
        values = [v or 1.0 for v in found]
        bars = ax.barh(ys, [v - 1.0 for v in values], left=1.0, height=height, label=point)
        ax.bar_label(bars, [f"{v:.2f}" if v else "" for v in found], padding=3, fontsize=7)
        spread = max([spread, *(abs(math.log2(v)) for v in values)])
    ax.set_xscale("log", base=2)
    limit = 2 ** (spread * 1.25)
    ax.set_xlim(1 / limit, limit)
    ax.set_xticks([t for t in _RATIO_TICKS if 1 / limit <= t <= limit])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_yticks([j + height * (len(points) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylim(len(metrics) - 0.5, -0.5)
    ax.axvline(1.0, color="black", lw=1)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("A / B  (throughput: right is better for A; latency, CPU, memory: left is)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "A / B")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
