"""The request deadline: past it a plain request gets 504 and a stream an error event then
[DONE], both are aborted in the engine, and the cerebras-cloud-sdk raises the class it raises
against Cerebras for either.

A server of its own with a 10 s request timeout. Every other test server keeps the default ten
minutes: a test that holds a request open while the test process stalls (CI saw stalls of 30 s
and more) must not see it end at a deadline.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cerebras.cloud.sdk import APIStatusError, Cerebras, InternalServerError

from tests.support.cerebras_sdk import raised
from tests.support.closing import Closing
from tests.support.probes import engine_requests, wait_until
from tests.support.serverproc import ServerProcess, start_server
from tests.support.sse import sse_data

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
TIMEOUT = 10.0
LATE = 10.0
"""How long after the deadline the server may end a request (its own clock, in the access
log): the abort, the error and the log line, on a loaded machine."""
HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]
LONG = {"max_tokens": 8000, "ignore_eos": True}  # minutes of generation: outlasts TIMEOUT


@pytest.fixture(scope="module")
def hurried(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("deadline")
    env = {"LLAMA_SERVE_REQUEST_TIMEOUT": str(TIMEOUT)}
    server = start_server("--model", MODEL, log_dir=folder, env=env)
    yield server
    assert server.stop() == 0


def test_request_timeout_gives_504_or_an_error_event(hurried: ServerProcess) -> None:
    url = f"{hurried.base_url}/v1/chat/completions"
    body = {"model": MODEL, "messages": HELLO} | LONG
    ids = {kind: f"deadline-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("plain", "stream")}
    results: dict[str, Any] = {}

    def plain() -> None:
        headers = {"x-request-id": ids["plain"]}
        results["plain"] = httpx.post(url, json=body, headers=headers, timeout=120)

    thread = threading.Thread(target=plain)
    thread.start()
    headers = {"x-request-id": ids["stream"]}
    with httpx.stream("POST", url, json=body | {"stream": True}, headers=headers, timeout=120) as r:
        events = sse_data(r.iter_lines())
    thread.join(120)

    assert results["plain"].status_code == 504
    assert results["plain"].json()["error"]["code"] == "request_timeout"
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "request_timeout"
    assert any(e["choices"][0]["delta"].get("content") for e in events[1:-2])
    for kind, request_id in ids.items():  # ended at the deadline, by the server's clock
        line = hurried.access_line(request_id)
        assert TIMEOUT <= line["duration_s"] < TIMEOUT + LATE, (kind, line)
    # Both were aborted in the engine, which is free again: at once, against the minutes
    # their tokens would take (the abort follows the 504 by a moment).
    wait_until(lambda: engine_requests(hurried.base_url) == 0, 30, "both aborted in the engine")
    answer = httpx.post(url, json={"model": MODEL, "messages": HELLO, "max_tokens": 8}, timeout=60)
    assert answer.status_code == 200


def test_cerebras_sdk_raises_internal_server_error_as_response_and_as_event(
    hurried: ServerProcess, closing: Closing
) -> None:
    """Both at once: the 504 response, and the stream's 504 event after chunks."""
    sdk = closing(Cerebras(base_url=hurried.base_url, api_key="unused", max_retries=0))
    body = {"model": MODEL, "messages": HELLO, "max_tokens": LONG["max_tokens"]}
    extra = {"extra_body": {"ignore_eos": True}}
    errors: dict[str, APIStatusError] = {}

    def plain() -> None:
        errors["plain"] = raised(lambda: sdk.chat.completions.create(**body, **extra))

    thread = threading.Thread(target=plain)
    thread.start()
    errors["stream"] = raised(lambda: sdk.chat.completions.create(**body, **extra, stream=True))
    thread.join(120)
    for where, error in errors.items():
        assert type(error) is InternalServerError, where
        assert error.body["code"] == "request_timeout" and error.status_code == 504
    assert errors["plain"].response.status_code == 504
    assert errors["stream"].response.status_code == 200
