"""A client that goes away has its request aborted in the engine at once."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.support.probes import engine_requests, wait_idle, wait_until
from tests.support.sse import sse_data

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
LONG = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Count to ten thousand."}],
    "max_tokens": 8000,  # minutes of generation: still going when the test leaves
    "ignore_eos": True,
}


ABORTED_WITHIN_S = 30
"""Seconds for the engine to let a gone client's request go: "at once" against the minutes
its 8,000 tokens would take, with room for a loaded machine."""


def test_stream_disconnect_aborts(smol_url: str) -> None:
    wait_idle(smol_url, 60)  # nothing left by an earlier test on the shared server
    with httpx.stream(
        "POST", f"{smol_url}/v1/chat/completions", json=LONG | {"stream": True}, timeout=60
    ) as r:
        lines = r.iter_lines()
        head: list[str] = []
        while len(sse_data(head)) < 3:  # the role chunk and two of content: generating
            head.append(next(lines))
        assert not any("error" in event for event in sse_data(head)), head
        assert engine_requests(smol_url) == 1
    wait_until(lambda: engine_requests(smol_url) == 0, ABORTED_WITHIN_S, "aborted")


def test_non_stream_disconnect_aborts(smol_url: str) -> None:
    wait_idle(smol_url, 60)
    body = json.dumps(LONG).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", httpx.URL(smol_url).port or 80)) as client:
        client.sendall(head.encode() + body)
        wait_until(lambda: engine_requests(smol_url) == 1, 60, "generating")
    # The client went away before any answer.
    wait_until(lambda: engine_requests(smol_url) == 0, ABORTED_WITHIN_S, "aborted")
    # The engine is free again: a short request is served at once.
    r = httpx.post(f"{smol_url}/v1/chat/completions", json=LONG | {"max_tokens": 3}, timeout=30)
    assert r.status_code == 200
