"""Request bodies in gzip and MessagePack (as Cerebras accepts them) reach the app as the same
JSON a client could have sent; every limit applies to the decoded body."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from typing import Any

import httpx
import msgpack
import pytest

from server.http.request_limits import RequestLimits
from tests.support.asgi import read_body, reply_json

pytestmark = pytest.mark.reliability

LIMIT = 10_000
PAYLOAD = {
    "model": "smollm2-135m",
    "messages": [{"role": "user", "content": "Grüß dich, 世界 🌍"}],
    "temperature": 0.5,
    "max_tokens": 7,
}
JSON = json.dumps(PAYLOAD, ensure_ascii=False, separators=(",", ":")).encode()


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the body it was handed and the headers that describe it."""
    body = await read_body(receive)
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    described = {k: headers.get(k) for k in ("content-type", "content-encoding", "content-length")}
    await reply_json(send, {"body": body.decode(), "headers": described})


def post(content: bytes, **headers: str) -> httpx.Response:
    app = RequestLimits(echo, max_request_bytes=LIMIT, max_json_depth=8)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/", content=content, headers=headers)

    return asyncio.run(go())


def livekit_wire(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """What livekit-plugins-cerebras 1.8.9 sends by default (its _CerebrasClient: msgpack, then
    gzip at level 5)."""
    body = gzip.compress(msgpack.packb(payload), compresslevel=5)
    return body, {"Content-Type": "application/vnd.msgpack", "Content-Encoding": "gzip"}


def error_of(r: httpx.Response) -> dict[str, Any]:
    return r.json()["error"]


@pytest.mark.parametrize(
    "media", ["application/vnd.msgpack", "application/msgpack", "application/x-msgpack"]
)
def test_msgpack_becomes_the_same_json(media: str) -> None:
    r = post(msgpack.packb(PAYLOAD), **{"Content-Type": media})
    assert r.status_code == 200
    seen = r.json()
    assert json.loads(seen["body"]) == PAYLOAD
    assert seen["headers"] == {
        "content-type": "application/json",
        "content-encoding": None,
        "content-length": str(len(seen["body"].encode())),
    }


def test_gzip_json_and_the_livekit_wire_decode_to_the_payload() -> None:
    r = post(
        gzip.compress(JSON), **{"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert r.status_code == 200 and json.loads(r.json()["body"]) == PAYLOAD
    body, headers = livekit_wire(PAYLOAD)
    r = post(body, **headers)
    assert r.status_code == 200 and json.loads(r.json()["body"]) == PAYLOAD
    assert r.json()["headers"]["content-encoding"] is None


def test_plain_json_passes_untouched() -> None:
    r = post(JSON, **{"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["body"].encode() == JSON


def test_two_gzip_members_back_to_back_are_one_body() -> None:
    half = len(JSON) // 2
    body = gzip.compress(JSON[:half]) + gzip.compress(JSON[half:])
    r = post(body, **{"Content-Encoding": "gzip"})
    assert r.status_code == 200 and json.loads(r.json()["body"]) == PAYLOAD


def test_a_gzip_bomb_is_413_without_inflating_it_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 GiB of zeros compresses to about 1 MiB; the inflater is never asked for more than the
    limit plus one byte."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    body = bomb.compress(b"\0" * (LIMIT * 50)) + bomb.flush()
    assert len(body) < LIMIT  # small on the wire, 50x the limit inflated
    produced: list[int] = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.inner = real(*args, **kwargs)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self.inner.decompress(data, max_length)
            produced.append(len(out))
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    monkeypatch.setattr(zlib, "decompressobj", Counting)
    r = post(body, **{"Content-Encoding": "gzip"})
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
    assert sum(produced) <= LIMIT + 1


def test_msgpack_that_grows_past_the_limit_as_json_is_413() -> None:
    """MessagePack is denser than JSON (a small integer is one byte, ``0,`` two): the limit is
    on the JSON the routes would parse."""
    fits, grows = msgpack.packb({"n": [0] * 4_000}), msgpack.packb({"n": [0] * 6_000})
    assert len(grows) < LIMIT < len(json.dumps({"n": [0] * 6_000}, separators=(",", ":")))
    assert post(fits, **{"Content-Type": "application/msgpack"}).status_code == 200
    r = post(grows, **{"Content-Type": "application/msgpack"})
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"\x1f\x8b\x08garbage", {"Content-Encoding": "gzip"}, 400, "invalid_body"),
        (gzip.compress(JSON)[:-12], {"Content-Encoding": "gzip"}, 400, "invalid_body"),
        (JSON, {"Content-Encoding": "br"}, 415, "unsupported_media_type"),
        (b"\x92\x01", {"Content-Type": "application/msgpack"}, 400, "invalid_body"),
        (
            msgpack.packb(PAYLOAD) + b"x",
            {"Content-Type": "application/msgpack"},
            400,
            "invalid_body",
        ),
        (b"\x91" * 5_000 + b"\x00", {"Content-Type": "application/msgpack"}, 400, "invalid_body"),
        (
            msgpack.packb({"a": b"\x00\x01"}),
            {"Content-Type": "application/msgpack"},
            400,
            "invalid_body",
        ),
        (msgpack.packb({1: 2}), {"Content-Type": "application/msgpack"}, 400, "invalid_body"),
        (
            msgpack.packb({"a": float("nan")}),
            {"Content-Type": "application/msgpack"},
            400,
            "invalid_json",
        ),
        (
            msgpack.packb([[[[[[[[[[1]]]]]]]]]]),
            {"Content-Type": "application/msgpack"},
            400,
            "json_too_deep",
        ),
    ],
    ids=[
        "not gzip",
        "gzip cut short",
        "brotli",
        "msgpack cut short",
        "msgpack extra bytes",
        "msgpack nested past its stack",
        "msgpack binary",
        "msgpack integer key",
        "msgpack NaN",
        "msgpack too deep",
    ],
)
def test_bodies_that_do_not_decode_are_refused(
    body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    r = post(body, **headers)
    assert r.status_code == status, r.text
    error = error_of(r)
    assert error["code"] == code and error["type"] == "invalid_request_error"
    assert "Traceback" not in r.text
