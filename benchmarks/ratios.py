"""The A / B ratio table of compare mode (A is ours, B theirs): pure, so it is unit-tested."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.report import fmt, format_table

__all__ = [
    "COMPARED",
    "PLOTTED",
    "ComparedMetric",
    "RatioRow",
    "format_ratio_table",
    "lookup",
    "ratio_rows",
]

TOLERANCE = 0.02
"""Ratios within 2% of 1 are reported as a tie (``=``): below run-to-run noise."""


@dataclass(frozen=True)
class ComparedMetric:
    """One row of the table: where the figure sits in a summary and which direction wins."""

    label: str
    path: tuple[str, ...]
    higher_is_better: bool | None
    """``None``: a figure that should match (prompt length), not one to win on."""


def _lat(name: str, key: str, stats: Sequence[str]) -> list[ComparedMetric]:
    return [ComparedMetric(f"{name} {s} (ms)", (key, s), False) for s in stats]


COMPARED: tuple[ComparedMetric, ...] = (
    ComparedMetric("prompt tokens (mean)", ("prompt_tokens", "reported", "mean"), None),
    ComparedMetric("output tokens (total)", ("total_output_tokens",), None),
    ComparedMetric("request throughput (req/s)", ("request_throughput",), True),
    ComparedMetric("output throughput (tok/s)", ("output_throughput",), True),
    ComparedMetric("goodput (req/s)", ("goodput", "request_goodput"), True),
    *_lat("TTFT", "ttft_ms", ("mean", "p50", "p90", "p99")),
    *_lat("TPOT", "tpot_ms", ("mean", "p50", "p90", "p99")),
    *_lat("ITL", "itl_ms", ("mean", "p50", "p90", "p99")),
    *_lat("E2E", "e2el_ms", ("mean", "p50", "p90", "p99")),
    ComparedMetric("failed requests", ("failed",), False),
    ComparedMetric("failed_generation", ("failed_generation",), False),
    ComparedMetric("invalid outputs", ("invalid_outputs",), False),
    ComparedMetric("API processes", ("process", "api_processes"), None),
    ComparedMetric("API CPU s / 1k out tok", ("process", "api_cpu_s_per_1k_tokens"), False),
    ComparedMetric("out tok per API CPU s", ("process", "output_tokens_per_api_cpu_s"), True),
    ComparedMetric("engine CPU s / 1k out tok", ("process", "children_cpu_s_per_1k_tokens"), False),
    ComparedMetric("API peak RSS (MiB)", ("process", "api_peak_rss_mib"), False),
    ComparedMetric("children peak RSS (MiB)", ("process", "children_peak_rss_mib"), False),
)
"""Rows in display order; metrics absent from both summaries are left out."""

PLOTTED = (
    "request throughput (req/s)",
    "output throughput (tok/s)",
    "goodput (req/s)",
    "TTFT p50 (ms)",
    "TTFT p99 (ms)",
    "TPOT p50 (ms)",
    "TPOT p99 (ms)",
    "ITL p50 (ms)",
    "E2E p50 (ms)",
    "E2E p99 (ms)",
    "API CPU s / 1k out tok",
    "out tok per API CPU s",
    "engine CPU s / 1k out tok",
    "API peak RSS (MiB)",
)
"""The rows worth a bar in the ratio plot (counts of failures make poor ratios)."""


@dataclass(frozen=True)
class RatioRow:
    """A / B for one metric, and who wins: ``A``, ``B``, ``=`` (tie), ``!=`` (a figure that
    should match does not) or empty (no ratio)."""

    label: str
    a: float | None
    b: float | None
    ratio: float | None
    better: str


def lookup(summary: Mapping[str, Any], path: Sequence[str]) -> float | None:
    """The number at ``path`` in a nested summary, or ``None`` if any step is missing."""
    node: Any = summary
    for key in path:
        if not isinstance(node, Mapping) or node.get(key) is None:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def _winner(ratio: float | None, higher_is_better: bool | None) -> str:
    if ratio is None:
        return ""
    if abs(ratio - 1.0) <= TOLERANCE:
        return "="
    if higher_is_better is None:
        return "!="
    return "A" if (ratio > 1.0) == higher_is_better else "B"


def ratio_rows(
    a: Mapping[str, Any], b: Mapping[str, Any], metrics: Sequence[ComparedMetric] = COMPARED
) -> list[RatioRow]:
    """One row per metric present in either summary; the ratio is ``None`` when B is 0."""
    rows = []
    for metric in metrics:
        va, vb = lookup(a, metric.path), lookup(b, metric.path)
        if va is None and vb is None:
            continue
        if va is not None and vb is not None and vb != 0:
            ratio: float | None = va / vb
        elif va == 0 and vb == 0:
            ratio = 1.0
        else:
            ratio = None
        rows.append(RatioRow(metric.label, va, vb, ratio, _winner(ratio, metric.higher_is_better)))
    return rows


def format_ratio_table(rows: Sequence[RatioRow], a_label: str = "A", b_label: str = "B") -> str:
    """Render rows with the endpoints' labels; the ratio column is always A / B."""
    headers = ["metric", a_label, b_label, f"{a_label} / {b_label}", "better"]
    better = {"A": a_label, "B": b_label, "=": "tie", "!=": "DIFFERS", "": ""}
    body = [
        [r.label, r.a, r.b, fmt(r.ratio, 3) if r.ratio is not None else "-", better[r.better]]
        for r in rows
    ]
    return format_table(headers, body)
