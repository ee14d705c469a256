"""Terminal tables and the JSON result file; rendering only, no measuring."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["fmt", "format_run", "format_sweep", "format_table", "write_json"]

LATENCIES = (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2el_ms"))
STATS = ("mean", "p50", "p90", "p99")


def fmt(value: Any, digits: int = 2) -> str:
    """Numbers with a fixed number of decimals (thousands separated); ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [
        [c if isinstance(c, str) else fmt(c) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def format_run(title: str, summary: Mapping[str, Any]) -> str:
    """One run in full: counts, throughputs, goodput, latency and server-time percentiles."""
    good = summary["goodput"]
    lines = [
        f"\n== {title} ==",
        f"requests {summary['requests']}: {summary['completed']} completed, "
        f"{summary['failed']} failed, {summary['invalid_outputs']} invalid outputs, "
        f"{summary['failed_generation']} failed_generation; "
        f"wall time {fmt(summary['duration_s'])} s",
        f"throughput: {fmt(summary['request_throughput'], 3)} req/s, "
        f"{fmt(summary['output_throughput'])} output tok/s, "
        f"{fmt(summary['total_token_throughput'])} total tok/s",
    ]
    if good["slos_ms"]:
        bounds = ", ".join(f"{k}<={fmt(v, 0)}ms" for k, v in good["slos_ms"].items())
        lines.append(
            f"goodput ({bounds}): {fmt(good['request_goodput'], 3)} req/s, "
            f"{good['good_requests']}/{summary['requests']} requests good"
        )
    if summary["errors"] or any(k != "200" for k in summary["status_counts"]):
        lines.append(f"HTTP status: {summary['status_counts']}  errors: {summary['errors']}")
        for kind, message in summary.get("error_examples", {}).items():
            lines.append(f"  {kind}: {message[:200]}")
    if summary["invalid_reasons"]:
        lines.append(f"invalid outputs: {summary['invalid_reasons']}")
    prompt = summary["prompt_tokens"]
    if prompt["reported"]:
        lines.append(
            f"usage.prompt_tokens mean {fmt(prompt['reported']['mean'], 1)}; "
            f"{prompt['mismatched']}/{prompt['checked']} differ from the tokenizer's count "
            f"(max diff {prompt['max_abs_diff']})"
        )
    rows = [
        [name, *(dist[s] for s in STATS)]
        for name, key in LATENCIES
        if (dist := summary.get(key)) is not None
    ]
    rows += [
        [f"server {name}", *(dist[s] for s in STATS)]
        for name, dist in summary.get("server_time_ms", {}).items()
    ]
    if rows:
        lines += ["", format_table(["latency (ms)", *STATS], rows)]
    return "\n".join(lines)


def _stat(summary: Mapping[str, Any], key: str, stat: str) -> float | None:
    return (summary.get(key) or {}).get(stat)


def format_sweep(points: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """One line per load point: the figures one reads along a sweep."""
    headers = ["load", "ok/total", "req/s", "out tok/s", "goodput", "TTFT p50", "TTFT p99"]
    headers += ["TPOT p50", "ITL p99", "E2E p50"]
    rows = []
    for label, s in points:
        rows.append(
            [
                label,
                f"{s['completed']}/{s['requests']}",
                s["request_throughput"],
                s["output_throughput"],
                s["goodput"]["request_goodput"] if s["goodput"]["slos_ms"] else None,
                _stat(s, "ttft_ms", "p50"),
                _stat(s, "ttft_ms", "p99"),
                _stat(s, "tpot_ms", "p50"),
                _stat(s, "itl_ms", "p99"),
                _stat(s, "e2el_ms", "p50"),
            ]
        )
    return format_table(headers, rows)


def write_json(path: Path, result: Mapping[str, Any]) -> Path:
    """Write the result file (creating its folder) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path
