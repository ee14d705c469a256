"""HTTP routes: parse, hand to the service, return. No logic of their own."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, Protocol, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

from server.chat.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ModelCard,
    ModelList,
)
from server.chat.service import ChatService, new_request_id
from server.common.chunks import Encoded
from server.completions.protocol import CompletionRequest, CompletionResponse
from server.completions.service import CompletionService, new_completion_id
from server.errors import APIError, DrainingError, EngineDeadError
from server.http.body import parse_body
from server.http.control import Answer, Controlled, RequestControl
from server.http.gate import record_of
from server.http.send_guard import SendGuard
from server.metrics import render_metrics
from server.models.pool import ServedModel

__all__ = ["health_problem", "line_safe", "router"]

router = APIRouter()
log = logging.getLogger(__name__)


def _service(request: Request) -> ChatService:
    return request.app.state.service


def _control(request: Request) -> RequestControl:
    return request.app.state.control


# The bodies are read by the routes (server.http.body: large ones are validated off the event
# loop); server.http.openapi names them as the request bodies.
@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    return await _generate(request, body, _service(request), new_request_id())


@router.post("/v1/completions", response_model=CompletionResponse)
async def completions(request: Request) -> Response:
    """Text completions (OpenAI's legacy endpoint, and Cerebras's): one ``text_completion``
    object, or a stream of them."""
    body = await parse_body(request, CompletionRequest)
    service: CompletionService = request.app.state.completions
    return await _generate(request, body, service, new_completion_id())


class _Wire(Answer, Protocol):
    """A response as the route sends it."""

    def model_dump(self) -> dict[str, Any]: ...


P = TypeVar("P")
R = TypeVar("R", bound=_Wire)
R_co = TypeVar("R_co", bound=_Wire, covariant=True)


class _Generating(Protocol[P, R_co]):
    """What a generating endpoint's service offers the route (chat's, completions')."""

    def prepare(self, request: Any, request_id: str, arrival: float) -> Awaitable[P]: ...
    def complete(self, prepared: P) -> Awaitable[R_co]: ...
    def stream(self, prepared: P) -> AsyncGenerator[Encoded, None]: ...


async def _generate(
    request: Request, body: Controlled, service: _Generating[P, R], request_id: str
) -> Response:
    """Admit, prepare, then answer or stream, all under the request's control."""
    control = _control(request)
    headers = control.begin(request, body, request_id)  # 429 when full or over a limit
    # Under the deadline and the client's watch: a new schema's compile may wait here.
    prepared = await control.prepare(
        request, service.prepare(body, request_id, record_of(request.scope).arrival)
    )
    if body.stream:
        events = control.stream(request, service.stream(prepared))
        # Events end in "\n\n" as OpenAI's do (sep: pings too); sse-starlette's default
        # "\r\n\r\n" is valid SSE, but parsers that split on "\n\n" (vLLM's bench) lose
        # events in it.
        return _EventStream(_sse(events), ping=15, headers=headers, send_timeout=30, sep="\n")
    response = await control.answer(request, service.complete(prepared))
    return JSONResponse(response.model_dump(), headers=headers)


async def _sse(events: AsyncIterator[Encoded | APIError]) -> AsyncIterator[bytes]:
    """Each event framed once, here (``data: ...`` and a blank line: the bytes sse-starlette
    would make of it, without its per-event line splitting, needless for JSON, which holds
    no raw newline); then OpenAI's end marker."""
    async for event in events:
        data = json.dumps(event.body()).encode() if isinstance(event, APIError) else event.data
        yield b"data: " + line_safe(data) + b"\n\n"
    yield b"data: [DONE]\n\n"


# JSON leaves these three raw in strings, and SSE does not end a line at them, but
# str.splitlines() does: so do httpx's iter_lines() and every client reading a stream with it
# (a model writes them now and then: a CI test got an event cut mid-string). Escaped, they
# are the same JSON string.
_LINE_BREAKERS = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)


def line_safe(data: bytes) -> bytes:
    """``data`` with U+0085, U+2028 and U+2029 escaped: lines of JSON that no line reader
    splits. In UTF-8 their bytes never occur inside another character, and outside strings
    JSON is ASCII, so a plain replace is exact."""
    if b"\xc2\x85" in data or b"\xe2\x80" in data:
        for raw, escaped in _LINE_BREAKERS:
            data = data.replace(raw, escaped)
    return data


class _EventStream(EventSourceResponse):
    """A stream whose client stopped reading ends with a warning, not a server-error traceback.

    sse-starlette gives up on a write after ``send_timeout`` and raises; the stream's cleanup
    has already aborted the engine request. Returning leaves the response unfinished, so
    uvicorn closes the connection.
    """

    _guard: SendGuard

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        """sse-starlette's per-send timeout, kept by one timer per stream (``SendGuard``)
        instead of a cancel scope per send: each send runs through here."""
        await self._guard.send(send, message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._guard = SendGuard(self.send_timeout)
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:
            record = record_of(scope)
            record.fields["error"] = "client_stopped_reading"  # in the access log line too
            log.warning(
                "stream dropped: the client stopped reading",
                extra={"request_id": record.request_id, "send_timeout_s": self.send_timeout},
            )
        finally:
            self._guard.close()


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_card(m) for m in _service(request).pool])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> ModelCard:
    return _card(_service(request).pool.get(model_id))


def _card(model: ServedModel) -> ModelCard:
    return ModelCard(id=model.id, created=model.created, owned_by="llama-serve")


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """503 once an engine died or a drain began (a probe's answer, not a rejection)."""
    problem = health_problem(request.app)
    if problem is not None:
        return JSONResponse(problem.body(), status_code=problem.status)
    return JSONResponse({"status": "ok", "models": [m.id for m in _service(request).pool]})


def health_problem(app: FastAPI) -> APIError | None:
    """Why this server should get no traffic (an engine died, a drain began), or None. The
    Ray Serve replica's health check asks the same (server/serve_app.py)."""
    if not app.state.service.pool.alive:
        return EngineDeadError("The engine has stopped; this server is restarting.")
    if app.state.lifecycle.state != "serving":
        return DrainingError("The server is shutting down.")
    return None


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(render_metrics(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/tcp_warming")
async def tcp_warming() -> dict[str, str]:
    """The Cerebras SDK calls this when a client is created, to open the connection early."""
    return {"status": "ok"}
