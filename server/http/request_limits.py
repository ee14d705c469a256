"""Request limits checked before anything parses the request: header size, body size, JSON shape.

Pure ASGI middleware, so a refused request costs no JSON parsing, no pydantic validation and
no engine work, and the answer is the usual ``{"error": {...}}`` envelope:

- headers larger than ``max_header_bytes`` -> 431 ``headers_too_large``. uvicorn's httptools
  parser has no header limit of its own, so this is the only one (a reverse proxy in front
  should cap what is buffered before the application sees it);
- a body larger than ``max_request_bytes`` -> 413 ``request_too_large``, decided from
  ``Content-Length`` before reading, or while reading a chunked body. The rest of the body is
  read and thrown away (up to a bound) so the client reads the 413 instead of a reset;
- a body that takes longer than ``body_timeout`` to arrive (a client trickling bytes to hold
  a connection) -> 408 ``body_timeout``;
- JSON nested deeper than ``max_json_depth`` -> 400 ``json_too_deep``: Python's parser raises
  ``RecursionError`` near 1,000 levels, and the tool prompt and schema code recurse too;
- more than ``max_json_containers`` arrays and objects -> 400 ``json_too_complex``: parsing
  them holds the GIL, so even in a worker thread the event loop would wait;
- ``NaN`` and ``Infinity`` outside strings -> 400 ``invalid_json``: Python accepts them, JSON
  (and every other client and server) does not.

The JSON checks (``server.http.jsonscan``) scan the raw bytes in linear time at C speed: under a
millisecond for 64 KiB, tens of milliseconds for 4 MiB of any shape. A body larger than
``SCAN_IN_THREAD_BYTES`` is scanned in a worker thread, so the event loop goes on serving
other requests (``/health`` among them) meanwhile.
"""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import (
    APIError,
    BadRequestError,
    BodyTimeoutError,
    ContentTooLargeError,
    HeadersTooLargeError,
)
from server.http.body_codecs import decode_body, is_encoded
from server.http.gate import record_of
from server.http.jsonscan import has_nonfinite, json_containers, json_depth
from server.settings import Settings

__all__ = ["SCAN_IN_THREAD_BYTES", "RequestLimits", "json_problem"]

DRAIN_FACTOR = 4
"""A body over the limit is read and discarded up to this many times the limit (never kept);
beyond that the connection is closed without reading on."""

SCAN_IN_THREAD_BYTES = 64 * 1024
"""JSON bodies larger than this are scanned in a worker thread, smaller ones on the event loop.
Measured over the shapes of tests/support/scan_shapes.py (the slowest shape's median, on a busy
2-core machine): 64 KiB scans in 0.7 ms, 256 KiB in 9 ms, 4 MiB in 65 ms, and the hop to a thread
and back costs some 50 us. So a scan on the loop holds it for a millisecond at most, one in a thread
lets go of the GIL at least every ~10 ms (``server.http.jsonscan``), and small bodies, the most
common, pay nothing for the hop."""


def json_problem(body: bytes, max_depth: int, max_containers: int | None = None) -> APIError | None:
    """Why ``body`` is refused before parsing (NaN or Infinity, too deep, more than
    ``max_containers`` arrays and objects), or None."""
    if has_nonfinite(body):
        return BadRequestError(
            "The request body is not valid JSON: NaN and Infinity are not JSON numbers.",
            code="invalid_json",
        )
    depth = json_depth(body, at_least=max_depth)
    if depth > max_depth:
        return BadRequestError(
            f"The request body nests JSON {depth} levels deep; at most {max_depth} are allowed.",
            code="json_too_deep",
        )
    if max_containers is not None:
        containers = json_containers(body, at_least=max_containers)
        if containers > max_containers:
            return BadRequestError(
                f"The request body holds {containers} JSON arrays and objects; at most "
                f"{max_containers} are allowed.",
                code="json_too_complex",
            )
    return None


class RequestLimits:
    """ASGI middleware enforcing the limits above; everything else passes through untouched.

    The limits are the keyword arguments, else those of ``settings``, else the defaults
    (``Settings()``, so the ``LLAMA_SERVE_MAX_*`` environment variables apply).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings | None = None,
        max_request_bytes: int | None = None,
        max_header_bytes: int | None = None,
        max_json_depth: int | None = None,
        max_json_containers: int | None = None,
        body_timeout: float | None = None,
    ) -> None:
        if settings is None:
            settings = Settings()
        self.app = app
        self.max_request_bytes = max_request_bytes or settings.max_request_bytes
        self.max_header_bytes = max_header_bytes or settings.max_header_bytes
        self.max_json_depth = max_json_depth or settings.max_json_depth
        self.max_json_containers = max_json_containers or settings.max_json_containers
        self.body_timeout = body_timeout or settings.body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error: APIError
        header_bytes = sum(len(k) + len(v) for k, v in scope["headers"])
        if header_bytes > self.max_header_bytes:
            error = HeadersTooLargeError(
                f"The request headers are {header_bytes} bytes; at most "
                f"{self.max_header_bytes} are allowed.",
                headers={"connection": "close"},
            )
            await _reply(error, scope, receive, send)
            return
        declared = _content_length(scope)
        try:
            async with asyncio.timeout(self.body_timeout):
                if declared is not None and declared > self.max_request_bytes:
                    await self._drain(receive, 0)
                    await _reply(self._too_large(declared), scope, receive, send)
                    return
                body, size, complete = await self._read(receive)
        except TimeoutError:
            error = BodyTimeoutError(
                f"The request body did not arrive within {self.body_timeout:g} s.",
                headers={"connection": "close"},
            )
            await _reply(error, scope, receive, send)
            return
        if not complete:
            if size > self.max_request_bytes:
                await _reply(self._too_large(size, more=True), scope, receive, send)
            return  # or the client went away: nobody to answer
        headers = scope["headers"]
        # Inflating and converting can make a small body large: off the loop too.
        if len(body) > SCAN_IN_THREAD_BYTES or is_encoded(headers):
            result = await asyncio.to_thread(self._decode_and_check, body, headers)
        else:
            result = self._decode_and_check(body, headers)
        if isinstance(result, APIError):
            await _reply(result, scope, receive, send)
            return
        body, decoded_headers = result
        if decoded_headers is not headers:
            scope = dict(scope, headers=decoded_headers)
        await self.app(scope, _replay(body, receive), send)

    def _decode_and_check(
        self, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, list[tuple[bytes, bytes]]] | APIError:
        """The body and headers the app should see (gzip and MessagePack decoded to JSON), or
        why the request is refused."""
        try:
            decoded = decode_body(body, headers, self.max_request_bytes)
        except APIError as error:
            return error
        if decoded is not None:
            body, headers = decoded
        if _is_json(headers):
            problem = json_problem(body, self.max_json_depth, self.max_json_containers)
            if problem is not None:
                return problem
        return body, headers

    async def _read(self, receive: Receive) -> tuple[bytes, int, bool]:
        """The whole body, its size, and whether it was complete and within the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", size, False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                if message.get("more_body", False):
                    await self._drain(receive, size)
                return b"", size, False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), size, True

    async def _drain(self, receive: Receive, already: int) -> None:
        """Read and discard the rest of a refused body, up to ``DRAIN_FACTOR`` times the limit."""
        size = already
        while size <= DRAIN_FACTOR * self.max_request_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _too_large(self, size: int, more: bool = False) -> APIError:
        over = "more than " if more else ""
        return ContentTooLargeError(
            f"The request body is {over}{size} bytes; at most {self.max_request_bytes} are "
            "allowed.",
            headers={"connection": "close"},
        )


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser refuses such requests before we see them
    return None


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    """FastAPI parses a body as JSON when it has no content type or a JSON one."""
    for key, value in headers:
        if key == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that returns the body already read, then waits on the real one (so the
    routes still see the client's disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reply(error: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    record_of(scope).note_error(error)
    response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
    await response(scope, receive, send)
