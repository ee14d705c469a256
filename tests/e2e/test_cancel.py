"""A client that goes away has its request aborted in the engine at once.

The test process can stall for minutes on CI while its servers go on (tests/support/stalls.py),
so what each step needs is read from the server, not inferred from what the client has read:
the engine holds the request when the client leaves, and the server's access log shows the
request ended before its last token.
"""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

import httpx
import pytest

from tests.support.probes import engine_requests, wait_idle, wait_until
from tests.support.serverproc import ServerProcess
from tests.support.sse import next_event

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
LONG = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Count to ten thousand."}],
    "max_tokens": 8000,  # about 15 minutes of generation here: still going when the test leaves
    "ignore_eos": True,
}


ABORTED_WITHIN_S = 30
"""Seconds for the engine to let a gone client's request go: "at once" against the minutes
its 8,000 tokens would take, with room for a loaded machine."""


def assert_cut_short(server: ServerProcess, request_id: str) -> dict[str, Any]:
    """The request's access-log line, which has no usage: it ended before its last token (a
    finished answer, streamed or not, logs its usage)."""
    line = server.access_line(request_id)
    assert "usage" not in line, line
    return line


def test_stream_disconnect_aborts(smol_server: ServerProcess) -> None:
    url = smol_server.base_url
    wait_idle(url, 60)  # nothing left by an earlier test on the shared server
    request_id = f"cancel-{uuid.uuid4().hex[:12]}"
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        json=LONG | {"stream": True},
        headers={"x-request-id": request_id},
        timeout=60,
    ) as r:
        lines = r.iter_lines()  # kept: a dropped line iterator closes the connection
        first = next_event(lines)
        assert first["choices"][0]["delta"]["role"] == "assistant", first  # streaming
        wait_until(lambda: engine_requests(url) == 1, 60, "generating")
    wait_until(lambda: engine_requests(url) == 0, ABORTED_WITHIN_S, "aborted")
    assert_cut_short(smol_server, request_id)


def test_non_stream_disconnect_aborts(smol_server: ServerProcess) -> None:
    url = smol_server.base_url
    wait_idle(url, 60)
    request_id = f"cancel-{uuid.uuid4().hex[:12]}"
    body = json.dumps(LONG).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
        f"x-request-id: {request_id}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", smol_server.port)) as client:
        client.sendall(head.encode() + body)
        wait_until(lambda: engine_requests(url) == 1, 60, "generating")
    # The client went away before any answer.
    wait_until(lambda: engine_requests(url) == 0, ABORTED_WITHIN_S, "aborted")
    line = assert_cut_short(smol_server, request_id)
    assert line["status"] == 499, line  # nginx's: the client left
    # The engine is free again: a short request is served at once.
    r = httpx.post(f"{url}/v1/chat/completions", json=LONG | {"max_tokens": 3}, timeout=30)
    assert r.status_code == 200
