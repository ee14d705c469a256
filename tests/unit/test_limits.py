"""Request limits (server.http.request_limits) on a stand-in app: no engine, exact statuses
and envelopes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest

import server.http.request_limits
from server.http.request_limits import SCAN_IN_THREAD_BYTES, RequestLimits, json_problem
from server.settings import Settings
from tests.support.asgi import read_body, reply_json

pytestmark = pytest.mark.reliability

LIMITS = {"max_request_bytes": 1000, "max_header_bytes": 2000, "max_json_depth": 8}


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the size of the body it was handed."""
    await reply_json(send, {"size": len(await read_body(receive))})


def post(content: bytes, app: Any = None, **headers: str) -> httpx.Response:
    app = app or RequestLimits(echo, **LIMITS)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/", content=content, headers=headers)

    return asyncio.run(go())


def error_of(r: httpx.Response) -> dict[str, Any]:
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_small_body_passes_through_unchanged() -> None:
    body = b'{"a": [1, 2, {"b": "NaN inside a string is fine [[[[[[[[[[[[[["}]}'
    r = post(body)
    assert r.status_code == 200 and r.json() == {"size": len(body)}


def test_body_over_limit_is_413() -> None:
    r = post(b"x" * 1001)
    assert r.status_code == 413
    assert error_of(r)["code"] == "request_too_large"
    assert r.headers["connection"] == "close"


def test_body_at_limit_passes() -> None:
    assert post(b" " * 1000).status_code == 200


def test_chunked_body_over_limit_is_413() -> None:
    """No Content-Length: counted while reading; the reading stops at the limit."""
    received = 0
    chunks = [{"type": "http.request", "body": b"x" * 300, "more_body": True}] * 100

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return chunks[received - 1]

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    asyncio.run(RequestLimits(echo, **LIMITS)(scope, receive, send))
    assert sent[0]["status"] == 413
    # Drained up to 4x the limit, then no further: the rest is never read.
    assert received <= 4 * 1000 // 300 + 2


def test_body_that_never_finishes_is_408() -> None:
    """A client trickling its body to hold the connection gets 408 after body_timeout."""

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"x", "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    app = RequestLimits(echo, **LIMITS, body_timeout=0.3)
    started = time.perf_counter()
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"]["code"] == "body_timeout"
    assert time.perf_counter() - started < 2


def test_headers_over_limit_are_431() -> None:
    r = post(b"{}", **{"x-big": "a" * 3000})
    assert r.status_code == 431
    assert error_of(r)["code"] == "headers_too_large"


def test_deep_json_is_400() -> None:
    r = post(b"[" * 9 + b"]" * 9, **{"content-type": "application/json"})
    assert r.status_code == 400
    assert error_of(r)["code"] == "json_too_deep"
    assert post(b"[" * 8 + b"]" * 8).status_code == 200


def test_deep_json_checked_only_for_json_bodies() -> None:
    r = post(b"[" * 9 + b"]" * 9, **{"content-type": "text/plain"})
    assert r.status_code == 200


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_400(literal: bytes) -> None:
    r = post(b'{"temperature": ' + literal + b"}")
    assert r.status_code == 400
    assert error_of(r)["code"] == "invalid_json"


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": "NaN"}',
        b'{"a": "\\"NaN\\" and Infinity"}',
        b'{"NaN": 1}',
        b'["[[[[[[[[[[[[[[[[[[[["]',
        b'[[[[[[[["]]]]]]]]"]]]]]]]]',
    ],
)
def test_strings_are_not_scanned(body: bytes) -> None:
    assert json_problem(body, 8) is None


def test_scanning_four_mebibytes_is_fast() -> None:
    shallow = b"[" + b"[]," * (4 * 2**20 // 3) + b"[]]"
    deep = b"[" * 2**21 + b"]" * 2**21
    for body, problem in ((shallow, False), (deep, True)):
        started = time.perf_counter()
        assert (json_problem(body, 64) is not None) is problem
        assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ("[]", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('"[[[["', 0),
        ('["\\"]]]]", [[]]]', 3),
        ("[" * 500 + "]" * 500, 500),
    ],
)
def test_json_depth(text: str, depth: int) -> None:
    from server.http.jsonscan import json_depth

    assert json_depth(text) == depth
    assert json_depth(text.encode()) == depth


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        # The old string regex took hours on the first one, on the event loop.
        (b'["' + b'\\"' * (2**21 - 8) + b"NaN", 400, "invalid_json"),
        (b"[" * 65 + b'"' + b'\\"' * (2**21 - 40), 400, "json_too_deep"),
        (b'["' + b"[" * (4 * 2**20 - 16) + b'", NaN]', 400, "invalid_json"),
        (b"[" + b'"[{\\"",' * (2**19 - 1) + b"0]", 200, None),
        (b'{"a": [' + b"[]," * 100 + b'"NaN"]}', 200, None),
    ],
    ids=["escape_storm", "deep_escape_storm", "brackets_in_string", "valid_4_mib", "small"],
)
def test_big_adversarial_bodies_are_scanned_in_a_thread(
    monkeypatch: pytest.MonkeyPatch, body: bytes, status: int, code: str | None
) -> None:
    """At the default 4 MiB limit, through the middleware: the same answer as inline, from a
    worker thread when the body is over SCAN_IN_THREAD_BYTES (on the event loop otherwise)."""
    limit = Settings().max_request_bytes
    assert len(body) <= limit
    on_loop: list[bool] = []
    scan = server.http.request_limits.json_problem

    def spy(raw: bytes, max_depth: int, max_containers: int | None = None) -> Any:
        on_loop.append(threading.current_thread() is threading.main_thread())
        return scan(raw, max_depth, max_containers)

    monkeypatch.setattr(server.http.request_limits, "json_problem", spy)
    r = post(body, RequestLimits(echo, max_request_bytes=limit, max_json_depth=64))
    assert r.status_code == status
    if code is None:
        assert r.json() == {"size": len(body)}
    else:
        assert error_of(r)["code"] == code
    assert on_loop == [len(body) <= SCAN_IN_THREAD_BYTES]
