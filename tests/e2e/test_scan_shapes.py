"""The adversarial JSON shapes of ``tests/support/scan_shapes.py`` at the 4 MiB body limit, sent
to the real server (smollm2-135m) while another client polls ``/health``.

Each shape goes twice, made to be read whole by the scans of ``server/http/jsonscan.py``: once with
``NaN`` after it and once behind 65 opening brackets (``scanned_bodies``). Every body must get
its 400 in the OpenAI envelope, and ``/health`` must keep answering meanwhile: the scans run
in a worker thread (``server/http/request_limits.py``). The latencies are printed.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from server.settings import Settings
from tests.support.scan_shapes import scanned_bodies

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

LIMIT = Settings().max_request_bytes
DEPTH = Settings().max_json_depth
HEALTH_BOUND = 1.0
"""Seconds for the slowest /health answer while the bodies are scanned: room for a loaded
2-core CI machine (measured: 80 to 100 ms with other tests running beside, README "Limits").
The string regex the scans used before held the event loop for hours on the first body."""
POLL_PERIOD = 0.01
BEAT_PERIOD = 0.01
STALL = 0.1
"""Seconds: a heartbeat this much later than due means the test process itself was stopped
(descheduled on a loaded machine, or its GIL held), and a poll's wait over that time is not
the server's."""


class HealthPoller:
    """Polls /health every POLL_PERIOD from a thread, keeping each answer's latency; a
    heartbeat thread beside it records when this process itself was stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.polls: list[tuple[float, float]] = []
        self.statuses: list[int] = []
        self.stalls: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, daemon=True),
            threading.Thread(target=self._beat, daemon=True),
        ]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                status = client.get("/health").status_code
                self.polls.append((started, time.perf_counter()))
                self.statuses.append(status)
                self._stop.wait(POLL_PERIOD)

    def _beat(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(BEAT_PERIOD):
            now = time.perf_counter()
            if now - last > BEAT_PERIOD + STALL:
                self.stalls.append((last + BEAT_PERIOD, now))
            last = now

    def __enter__(self) -> HealthPoller:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    @property
    def latencies(self) -> list[float]:
        """Each poll's latency as the client saw it."""
        return [end - start for start, end in self.polls]

    def server_latencies(self) -> list[float]:
        """Each poll's latency less the time this process was stopped meanwhile: what the
        server took, however loaded the machine that runs the test."""
        return [
            end - start - sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.stalls)
            for start, end in self.polls
        ]

    def summary(self) -> str:
        ms = sorted(1000 * s for s in self.latencies)
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        stopped = sum(b - a for a, b in self.stalls)
        return (
            f"{len(ms)} polls, median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
            f"worst {ms[-1]:.1f} ms (the server's part: "
            f"{1000 * max(self.server_latencies()):.1f} ms); the test process stopped "
            f"{len(self.stalls)} times, {stopped:.1f} s in all"
        )


def test_scan_shapes_at_the_body_limit_leave_health_answering(smol_url: str) -> None:
    with HealthPoller(smol_url) as idle:
        time.sleep(2)
    refused: list[tuple[str, float]] = []
    with (
        httpx.Client(base_url=smol_url, timeout=120) as client,
        HealthPoller(smol_url) as busy,
    ):
        for name, body, code in scanned_bodies(LIMIT, DEPTH):
            assert len(body) <= LIMIT, name
            started = time.perf_counter()
            r = client.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
            refused.append((name, time.perf_counter() - started))
            assert r.status_code == 400, (name, r.status_code, r.text[:300])
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, (name, error)
            assert error["code"] == code, (name, error)
    name, seconds = max(refused, key=lambda item: item[1])
    print(f"\n{len(refused)} bodies of 4 MiB refused; the slowest in {seconds:.3f} s ({name})")
    print(f"/health idle: {idle.summary()}")
    print(f"/health while scanning: {busy.summary()}")
    assert set(idle.statuses) == {200} and set(busy.statuses) == {200}
    assert max(busy.server_latencies()) < HEALTH_BOUND, busy.summary()


def _filled(make: Callable[[int], bytes], limit: int) -> bytes:
    """The largest ``make(n)`` that fits in ``limit`` bytes."""
    low, high = 1, limit
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if len(make(mid)) <= limit else (low, mid - 1)
    return make(low)


def _heavy_bodies(limit: int) -> Iterator[tuple[str, str, bytes]]:
    """Bodies at the limit that are costly to parse or validate: many small values."""
    model = "smollm2-135m"
    message = {"role": "user", "content": "a"}
    shapes: list[tuple[str, str, Callable[[int], dict[str, Any]]]] = [
        ("token ids", "/v1/completions", lambda n: {"model": model, "prompt": [12345] * n}),
        ("token-id prompts", "/v1/completions", lambda n: {"model": model, "prompt": [[1]] * n}),
        ("messages", "/v1/chat/completions", lambda n: {"model": model, "messages": [message] * n}),
        (
            "content parts",
            "/v1/chat/completions",
            lambda n: {"model": model, "messages": [{**message, "content": [PART] * n}]},
        ),
    ]
    for name, path, make in shapes:
        yield name, path, _filled(lambda n, make=make: json.dumps(make(n)).encode(), limit)


PART = {"type": "text", "text": "a"}
CODES = ("json_too_complex", "array_above_max_length", "context_length_exceeded")


def test_bodies_costly_to_validate_leave_health_answering(smol_url: str) -> None:
    """Each is a 400, and /health keeps answering: bodies of too many arrays and objects are
    refused before they are parsed (the parser holds the GIL), the others are validated in a
    worker thread (server/http/body.py), and lists too long to ever be served are refused
    before pydantic walks them (it holds the GIL too)."""
    timings: list[str] = []
    # Built before polling: json.dumps holds this process's GIL, the poller's thread too.
    bodies = list(_heavy_bodies(LIMIT))
    with (
        httpx.Client(base_url=smol_url, timeout=120) as client,
        HealthPoller(smol_url) as busy,
    ):
        for name, path, body in bodies:
            started = time.perf_counter()
            r = client.post(path, content=body, headers={"content-type": "application/json"})
            timings.append(f"{name} {time.perf_counter() - started:.2f} s")
            assert r.status_code == 400, (name, r.text[:300])
            assert r.json()["error"]["code"] in CODES, (name, r.text[:300])
    print(f"\n4 MiB bodies refused: {', '.join(timings)}; /health meanwhile: {busy.summary()}")
    assert set(busy.statuses) == {200}
    assert max(busy.server_latencies()) < HEALTH_BOUND, busy.summary()
