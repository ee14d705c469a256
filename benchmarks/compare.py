"""Compare mode: the same load against two endpoints, interleaved in rounds.

Each round runs every load point on both endpoints, A first in odd rounds and B first in
even ones (A B, B A, A B, ...), so machine drift and noisy neighbours weigh on both alike
and neither always runs on a server just warmed by the other's load. Prompts are fresh to
each round (prefix caching cannot favour later rounds) but identical for A and B. Each
endpoint's records are pooled over the rounds (throughputs use the summed wall time) and
the table gives A / B for each metric. When a server's pid is known, its CPU seconds per
1,000 output tokens (all its API processes, and its engine), output tokens per API
CPU-second and peak RSS are read from ``/proc`` around every run.

When both servers cannot run at once (one GPU too small for two copies of the model),
:func:`run_sequential` measures all rounds on A, then all rounds on B, with the same prompts.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks import procstats
from benchmarks.client import ChatClient
from benchmarks.load import LoadShape
from benchmarks.metrics import summarize
from benchmarks.ratios import ratio_rows
from benchmarks.records import RequestRecord
from benchmarks.runner import PromptSource, Workload, fetch_model, pool_size, run_point, warmup

__all__ = ["Comparison", "Target", "process_figures", "run_compare", "run_sequential"]


@dataclass
class Target:
    """One side of the comparison: an endpoint, the model id it serves, its server's pid,
    and what was measured on it so far (per load point, pooled over rounds)."""

    label: str
    base_url: str
    model: str | None = None
    pid: int | None = None
    records: dict[int, list[RequestRecord]] = field(default_factory=dict)
    durations: dict[int, float] = field(default_factory=dict)
    cpu: dict[int, list[float]] = field(default_factory=dict)
    """Per load point: [API CPU seconds, children CPU seconds] summed over rounds."""
    last_sample: procstats.ProcSample | None = None
    """The latest ``/proc`` reading: peak RSS survives the server being stopped."""


def process_figures(
    cpu: Sequence[float] | None, output_tokens: int, last: procstats.ProcSample | None
) -> dict[str, Any]:
    """CPU seconds per 1,000 output tokens (API processes, children), output tokens per
    API CPU-second (the front end's ceiling: what its processes could emit fully busy) and
    peak RSS."""
    if cpu is None or last is None:
        return {}
    per_k = (lambda s: s * 1000.0 / output_tokens) if output_tokens else (lambda s: None)
    return {
        "api_processes": last.api_processes,
        "output_tokens_per_api_cpu_s": output_tokens / cpu[0] if cpu[0] > 0 else None,
        "api_cpu_s": cpu[0],
        "children_cpu_s": cpu[1],
        "api_cpu_s_per_1k_tokens": per_k(cpu[0]),
        "children_cpu_s_per_1k_tokens": per_k(cpu[1]),
        "api_peak_rss_mib": last.api_peak_rss_mib,
        "children_peak_rss_mib": last.children_peak_rss_mib,
        "children": last.children,
    }


class Comparison:
    """Measures load points on two targets with identical prompts; builds the result."""

    def __init__(
        self,
        a: Target,
        b: Target,
        workload: Workload,
        shapes: Sequence[LoadShape],
        slos_ms: Mapping[str, float] | None = None,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        progress: bool = True,
    ) -> None:
        self.a, self.b, self.workload, self.shapes = a, b, workload, list(shapes)
        self.slos_ms = dict(slos_ms or {})
        self.api_key, self.timeout_s, self.progress = api_key, timeout_s, progress
        self.source = PromptSource(workload)
        self.rounds: dict[str, int] = {a.label: 0, b.label: 0}

    async def prepare(self, target: Target, warmup_requests: int = 0) -> None:
        """Resolve the served model id and send the unmeasured warmup requests."""
        target.model = target.model or await fetch_model(target.base_url, self.api_key)
        if warmup_requests:
            async with self._client(target) as client:
                prompts = self.source.pool(warmup_requests, "warmup")
                top = max(s.concurrency or 1 for s in self.shapes)
                await warmup(client, target.model, self.workload, prompts, top)

    async def measure(self, target: Target, round_no: int) -> None:
        """Every load point once on ``target``, with this round's prompts."""
        assert target.model is not None, "prepare() the target first"
        async with self._client(target) as client:
            for index, shape in enumerate(self.shapes):
                prompts = self.source.pool(pool_size(shape), f"round{round_no}:point{index}")
                before = procstats.sample(target.pid)
                desc = f"round {round_no} {target.label} {shape.label}"
                result = await run_point(
                    client, target.model, self.workload, prompts, shape, self.slos_ms,
                    self.progress, desc,
                )  # fmt: skip
                after = procstats.sample(target.pid)
                target.records.setdefault(index, []).extend(result.records)
                target.durations[index] = target.durations.get(index, 0.0) + result.duration_s
                if before is not None and after is not None:
                    cpu = target.cpu.setdefault(index, [0.0, 0.0])
                    cpu[0] += after.api_cpu_s - before.api_cpu_s
                    cpu[1] += after.children_cpu_s - before.children_cpu_s
                    target.last_sample = after
        self.rounds[target.label] += 1

    def _client(self, target: Target) -> ChatClient:
        return ChatClient(target.base_url, self.api_key, self.timeout_s)

    def result(self) -> dict[str, Any]:
        """Pooled summaries per load point and target, and the A / B rows."""
        a, b = self.a, self.b
        points = []
        for index, shape in enumerate(self.shapes):
            summaries = {}
            for target in (a, b):
                records = target.records.get(index, [])
                summary = summarize(records, target.durations.get(index, 0.0), self.slos_ms)
                summary["process"] = process_figures(
                    target.cpu.get(index), summary["total_output_tokens"], target.last_sample
                )
                summaries[target.label] = summary
            rows = ratio_rows(summaries[a.label], summaries[b.label])
            points.append(
                {
                    "label": shape.label,
                    "shape": shape.__dict__,
                    "summaries": summaries,
                    "ratios": [row.__dict__ for row in rows],
                }
            )
        return {
            "a": {"label": a.label, "base_url": a.base_url, "model": a.model, "pid": a.pid},
            "b": {"label": b.label, "base_url": b.base_url, "model": b.model, "pid": b.pid},
            "rounds": min(self.rounds.values()),
            "workload": self.workload.describe(),
            "points": points,
        }


def _fits(deadline: float | None, round_started: float | None) -> bool:
    """Whether another round, as long as the last one, ends before ``deadline``."""
    if deadline is None or round_started is None:
        return True
    return time.monotonic() + (time.monotonic() - round_started) <= deadline


async def run_compare(
    comparison: Comparison, rounds: int, warmup_requests: int = 0, deadline: float | None = None
) -> dict[str, Any]:
    """Interleaved rounds on two running servers: A B, B A, A B, ...

    With ``deadline`` (a :func:`time.monotonic` value), a round starts only if one more round
    as long as the previous one still ends in time; the first round always runs.
    """
    a, b = comparison.a, comparison.b
    for target in (a, b):
        await comparison.prepare(target, warmup_requests)
    started: float | None = None
    for round_no in range(1, rounds + 1):
        if not _fits(deadline, started):
            break
        started = time.monotonic()
        for target in (a, b) if round_no % 2 else (b, a):
            await comparison.measure(target, round_no)
    return comparison.result()


async def run_sequential(
    comparison: Comparison,
    rounds: int,
    up: Callable[[Target], Awaitable[None]],
    down: Callable[[Target], Awaitable[None]],
    warmup_requests: int = 0,
    deadline: float | None = None,
) -> dict[str, Any]:
    """All rounds on A, then all on B, for servers that cannot run together.

    ``up`` starts a target's server (and sets its pid), ``down`` stops it. With ``deadline``,
    B gets as many rounds as A managed in the first half of the remaining time.
    """
    a, b = comparison.a, comparison.b
    half = None if deadline is None else time.monotonic() + (deadline - time.monotonic()) / 2
    for target, limit in ((a, half), (b, deadline)):
        await up(target)
        try:
            await comparison.prepare(target, warmup_requests)
            started: float | None = None
            cap = rounds if target is a else comparison.rounds[a.label]
            for round_no in range(1, cap + 1):
                if not _fits(limit, started):
                    break
                started = time.monotonic()
                await comparison.measure(target, round_no)
        finally:
            await down(target)
    return comparison.result()
