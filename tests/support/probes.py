"""What end-to-end tests read from a running server: its live gauges, its health, and waits
on them (a test waits for the state it needs instead of sleeping and hoping)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx

from tests.support.metrics_text import labels_of, series_values
from tests.support.serverproc import ServerProcess

__all__ = [
    "engine_requests",
    "gauge",
    "inflight_requests",
    "short_request",
    "wait_idle",
    "wait_until",
]

MODEL = "smollm2-135m"


def gauge(url: str, name: str, labels: str = "", headers: dict[str, str] | None = None) -> float:
    """One live gauge of /metrics (``labels`` as written there, e.g. ``model_name="x"``;
    ``headers`` for a server that wants an API key)."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    values = series_values(text, name, **labels_of(labels))
    if len(values) != 1:
        raise AssertionError(f"{len(values)} series {name}{{{labels}}} in /metrics")
    return values[0]


def short_request(server: ServerProcess, model: str = MODEL) -> tuple[httpx.Response, float]:
    """An 8-token answer to "Hi" and the server's time for it: by its own clock (the access
    log), as the test process may stall while the server goes on (README, Development)."""
    request_id = f"probe-{uuid.uuid4().hex[:12]}"
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 8,
            "ignore_eos": True,
        },
        headers={"x-request-id": request_id},
        timeout=60,
    )
    return r, server.seconds(request_id)


def engine_requests(url: str, model: str = MODEL, headers: dict[str, str] | None = None) -> int:
    """Requests the engine holds (running or waiting), from /metrics."""
    return int(gauge(url, "llama_serve_engine_requests", f'model_name="{model}"', headers))


def inflight_requests(url: str) -> int:
    """HTTP requests the server is serving (what a drain waits for), from /metrics."""
    return int(gauge(url, "llama_serve_inflight_requests"))


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; raises naming ``what`` if it does not in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.1)


def wait_idle(url: str, timeout: float) -> float:
    """Seconds until the engine holds no request; raises if it still does after ``timeout``."""
    started = time.monotonic()
    wait_until(lambda: engine_requests(url) == 0, timeout, "idle: the engine still holds requests")
    return time.monotonic() - started
