"""Prometheus metrics: the engine's own ``vllm:*`` series plus counters and live gauges of ours.

vLLM's stat logger registers its metrics (``vllm:num_requests_running``,
``vllm:time_to_first_token_seconds``, ``vllm:request_success_total``, ...) in
prometheus-client's default registry, labelled by ``model_name``; counters and histograms
update as the engine steps. Ours:

- ``llama_serve_engine_requests``, ``llama_serve_admitted_requests`` and
  ``llama_serve_inflight_requests`` are read live when scraped, so they are right even while
  the engine is idle;
- ``llama_serve_rejected_requests_total{reason}``: requests refused before or instead of an
  answer (auth, overloaded, rate_limited, draining, timeout, bad_request, ...);
- ``llama_serve_failed_generations_total{model_name}``: JSON-mode outputs that failed
  validation (Cerebras's ``failed_generation``);
- ``llama_serve_http_responses_total{status}``: every HTTP answer by status code.

With several API processes (``--api-processes``) every series is the sum over them:
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor
before any process imports prometheus-client) keeps each process's counters and histograms,
vLLM's too, in files that any process reads when scraped. A gauge read when scraped cannot
be read in another process, so there each process writes its live values into a ``livesum``
gauge every quarter second (the answering process just before it answers).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from server.errors import REJECTION_REASONS, APIError, FailedGenerationError

if TYPE_CHECKING:  # the gauges read them; they count through this module
    from server.http.admission import Admission
    from server.lifecycle import Lifecycle
    from server.models.pool import ModelPool

__all__ = [
    "count_error",
    "count_response",
    "multiprocess",
    "publish_live_gauges",
    "render_metrics",
    "watch_pool",
]

_REJECTED = Counter(
    "llama_serve_rejected_requests",
    "Requests refused or cut short, by reason.",
    ["reason"],
)
_FAILED_GENERATIONS = Counter(
    "llama_serve_failed_generations",
    "JSON-mode outputs that did not parse or validate (Cerebras failed_generation).",
    ["model_name"],
)
_RESPONSES = Counter(
    "llama_serve_http_responses",
    "HTTP responses by status code.",
    ["status"],
)
for _reason in REJECTION_REASONS:  # a series exists (at 0) before the first rejection
    _REJECTED.labels(_reason)


def count_error(error: APIError, model: str | None = None) -> None:
    """One error a client was answered with: a rejection under its class's reason, or a
    JSON-mode output of ``model`` that failed validation."""
    if error.reason is not None:
        _REJECTED.labels(error.reason).inc()
    if isinstance(error, FailedGenerationError):
        _FAILED_GENERATIONS.labels(model or "").inc()


def count_response(status: int) -> None:
    _RESPONSES.labels(str(status)).inc()


_LIVE = {
    "llama_serve_engine_requests": (
        "Requests the engine holds right now (running or waiting), read when scraped.",
        ["model_name"],
    ),
    "llama_serve_admitted_requests": (
        "Requests admitted and not yet answered in full, per model (bounded by "
        "max_num_seqs + max_waiting_requests).",
        ["model_name"],
    ),
    "llama_serve_inflight_requests": (
        "HTTP requests being served (probes aside), from their headers to their last "
        "byte: what a drain waits for.",
        [],
    ),
}
"""The live gauges: name, help, labels."""

PUBLISH_SECONDS = 0.25
"""With several API processes, how often each writes its live gauges for the others."""


def multiprocess() -> bool:
    """Several API processes share the metrics (prometheus-client's test of the same)."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


_shared_gauges: dict[str, Gauge] = {}


def _shared_gauge(name: str) -> Gauge:
    """The live gauge ``name`` as a file-backed gauge summed over live processes."""
    if name not in _shared_gauges:
        doc, labels = _LIVE[name]
        _shared_gauges[name] = Gauge(name, doc, labels, registry=None, multiprocess_mode="livesum")
    return _shared_gauges[name]


class _PoolCollector(Collector):
    def __init__(
        self, pool: ModelPool, admission: Admission | None, lifecycle: Lifecycle | None
    ) -> None:
        self.pool = pool
        self.admission = admission
        self.lifecycle = lifecycle

    def collect(self) -> Iterator[GaugeMetricFamily]:
        unfinished = _family("llama_serve_engine_requests")
        admitted = _family("llama_serve_admitted_requests")
        for model in self.pool:
            unfinished.add_metric([model.id], model.engine.unfinished_requests)
            if self.admission is not None:
                admitted.add_metric([model.id], self.admission.held(model.id))
        yield unfinished
        yield admitted
        if self.lifecycle is not None:
            inflight = _family("llama_serve_inflight_requests")
            inflight.add_metric([], self.lifecycle.inflight)
            yield inflight

    def publish(self) -> None:
        """This process's live values into the shared gauges (multiprocess mode)."""
        for family in self.collect():
            gauge = _shared_gauge(family.name)
            for sample in family.samples:
                (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)


def _family(name: str) -> GaugeMetricFamily:
    doc, labels = _LIVE[name]
    return GaugeMetricFamily(name, doc, labels=labels)


_watched: dict[int, _PoolCollector] = {}


def watch_pool(
    pool: ModelPool,
    admission: Admission | None = None,
    lifecycle: Lifecycle | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> None:
    """Register the live gauges (replacing those of an earlier app in the same process)."""
    old = _watched.pop(id(registry), None)
    if old is not None:
        registry.unregister(old)
    _watched[id(registry)] = collector = _PoolCollector(pool, admission, lifecycle)
    registry.register(collector)


async def publish_live_gauges() -> None:
    """Keep this process's part of the live gauges current (multiprocess mode)."""
    while True:
        for collector in _watched.values():
            collector.publish()
        await asyncio.sleep(PUBLISH_SECONDS)


def render_metrics(registry: CollectorRegistry = REGISTRY) -> bytes:
    if multiprocess():
        for collector in _watched.values():
            collector.publish()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return generate_latest(registry)
