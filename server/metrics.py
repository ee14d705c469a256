"""Prometheus metrics: the engine's own ``vllm:*`` series plus live gauges of ours.

vLLM's stat logger registers its metrics (``vllm:num_requests_running``,
``vllm:time_to_first_token_seconds``, ...) in prometheus-client's default registry; they update
as the engine steps. ``llama_serve_engine_requests`` is read live from the engine when
scraped, so it is right even while the engine is idle.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["render_metrics", "watch_pool"]


class _PoolCollector(Collector):
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        unfinished = GaugeMetricFamily(
            "llama_serve_engine_requests",
            "Requests the engine holds right now (running or waiting), read when scraped.",
            labels=["model_name"],
        )
        for model in self.pool:
            unfinished.add_metric([model.id], model.engine.stats().running)
        yield unfinished


def watch_pool(pool: Any, registry: CollectorRegistry = REGISTRY) -> None:
    registry.register(_PoolCollector(pool))


def render_metrics(registry: CollectorRegistry = REGISTRY) -> bytes:
    return generate_latest(registry)
