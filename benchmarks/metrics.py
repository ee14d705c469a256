"""Pure metric computations: percentiles, per-run summaries, SLOs and goodput.

Definitions follow ``vllm.benchmarks.serve`` so that figures from both tools can be compared:
TTFT runs to the first chunk carrying generated content; TPOT is
``(last content chunk - first content chunk) / (output tokens - 1)``; ITL is every gap between
content chunks; output throughput is completed requests' output tokens over the wall time of
the run (first send to last completion). Percentiles interpolate linearly (NumPy's default).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from benchmarks.records import RequestRecord

__all__ = [
    "SERVER_TIME_FIELDS",
    "SLO_METRICS",
    "distribution",
    "meets_slos",
    "parse_slo",
    "percentile",
    "summarize",
]

SLO_METRICS = ("ttft", "tpot", "e2el")
"""Per-request metrics an SLO may bound, in milliseconds (vLLM's ``--goodput`` keys)."""

SERVER_TIME_FIELDS = ("queue_time", "prompt_time", "completion_time", "total_time")
"""Cerebras ``time_info`` fields, reported by the server in seconds."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Iterable[float], scale: float = 1000.0) -> dict[str, float] | None:
    """Mean, p50, p90, p99, min and max of ``values`` times ``scale`` (seconds to ms)."""
    scaled = [v * scale for v in values]
    if not scaled:
        return None
    return {
        "count": len(scaled),
        "mean": sum(scaled) / len(scaled),
        "p50": percentile(scaled, 50),
        "p90": percentile(scaled, 90),
        "p99": percentile(scaled, 99),
        "min": min(scaled),
        "max": max(scaled),
    }


def parse_slo(text: str) -> tuple[str, float]:
    """Parse ``ttft=2000`` (or vLLM's ``ttft:2000``): a metric and its bound in ms."""
    sep = "=" if "=" in text else ":"
    name, _, value = text.partition(sep)
    name = name.strip().lower()
    if name == "e2e":
        name = "e2el"
    if name not in SLO_METRICS:
        raise ValueError(f"unknown SLO metric {name!r}; use one of {', '.join(SLO_METRICS)}")
    try:
        bound = float(value)
    except ValueError:
        raise ValueError(f"SLO {text!r}: the bound must be a number of milliseconds") from None
    if bound <= 0:
        raise ValueError(f"SLO {text!r}: the bound must be positive")
    return name, bound


def _metric_seconds(record: RequestRecord, name: str) -> float | None:
    if name == "ttft":
        return record.ttft
    if name == "tpot":
        if record.ttft is None:
            return None
        # One output token has no TPOT; like vLLM, count it as meeting a TPOT bound.
        return record.tpot if record.tpot is not None else 0.0
    return record.latency


def meets_slos(record: RequestRecord, slos_ms: Mapping[str, float]) -> bool:
    """A *good* request: completed, valid output, and every bounded metric within its bound."""
    if not record.completed or record.invalid is not None:
        return False
    for name, bound_ms in slos_ms.items():
        value = _metric_seconds(record, name)
        if value is None or value * 1000.0 > bound_ms:
            return False
    return True


def _server_times(records: Sequence[RequestRecord]) -> dict[str, Any]:
    infos = [r.time_info for r in records if r.completed and r.time_info]
    out: dict[str, Any] = {}
    for name in SERVER_TIME_FIELDS:
        values = [float(info[name]) for info in infos if isinstance(info.get(name), int | float)]
        if values:
            out[name] = distribution(values)
    return out


def _prompt_check(records: Sequence[RequestRecord]) -> dict[str, Any]:
    """Compare the server's ``usage.prompt_tokens`` with the client's prediction."""
    reported = [r.prompt_tokens for r in records if r.completed and r.prompt_tokens is not None]
    checked = [
        r
        for r in records
        if r.completed and r.prompt_tokens is not None and r.expected_prompt_tokens is not None
    ]
    return {
        "reported": distribution(reported, scale=1.0),
        "checked": len(checked),
        "mismatched": sum(r.prompt_tokens != r.expected_prompt_tokens for r in checked),
        "max_abs_diff": max(
            (abs(r.prompt_tokens - r.expected_prompt_tokens) for r in checked),  # type: ignore[operator]
            default=0,
        ),
    }


def _first_messages(records: Sequence[RequestRecord]) -> dict[str, str]:
    """One message per error class, so a failing run says why without the per-request file."""
    examples: dict[str, str] = {}
    for r in records:
        if r.error is not None and r.error not in examples:
            examples[r.error] = r.error_message
    return examples


def summarize(
    records: Sequence[RequestRecord], duration_s: float, slos_ms: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """All figures of one run (or of several runs pooled, with their summed duration)."""
    slos_ms = dict(slos_ms or {})
    done = [r for r in records if r.completed]
    output_tokens = sum(r.output_tokens for r in done)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in done)
    good = sum(meets_slos(r, slos_ms) for r in records)
    rate = (lambda n: n / duration_s) if duration_s > 0 else (lambda n: 0.0)
    statuses = Counter("none" if r.status is None else str(r.status) for r in records)
    return {
        "requests": len(records),
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration_s": duration_s,
        "request_throughput": rate(len(done)),
        "output_throughput": rate(output_tokens),
        "total_token_throughput": rate(output_tokens + prompt_tokens),
        "total_output_tokens": output_tokens,
        "total_prompt_tokens": prompt_tokens,
        "ttft_ms": distribution(r.ttft for r in done if r.ttft is not None),
        "tpot_ms": distribution(t for r in done if (t := r.tpot) is not None),
        "itl_ms": distribution(itl for r in done for itl in r.itls),
        "e2el_ms": distribution(r.latency for r in done if r.latency is not None),
        "status_counts": dict(sorted(statuses.items())),
        "errors": dict(Counter(r.error for r in records if r.error is not None)),
        "error_examples": _first_messages(records),
        "failed_generation": sum(r.error == "failed_generation" for r in records),
        "invalid_outputs": sum(r.invalid is not None for r in done),
        "invalid_reasons": dict(Counter(r.invalid for r in done if r.invalid is not None)),
        "goodput": {
            "slos_ms": slos_ms,
            "good_requests": good,
            "request_goodput": rate(good),
            "good_fraction": good / len(records) if records else 0.0,
        },
        "server_time_ms": _server_times(records),
        "prompt_tokens": _prompt_check(records),
    }
