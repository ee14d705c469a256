"""HTTP routes: parse, hand to the service, return. No logic of their own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from server.control import RequestControl, timeout_error
from server.errors import EngineDeadError, ServiceUnavailableError
from server.gate import request_record
from server.metrics import render_metrics
from server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ModelCard,
    ModelList,
)
from server.service import ChatService, new_request_id

__all__ = ["router"]

router = APIRouter()
T = TypeVar("T")
log = logging.getLogger(__name__)


def _service(request: Request) -> ChatService:
    return request.app.state.service


def _control(request: Request) -> RequestControl:
    return request.app.state.control


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    service, control = _service(request), _control(request)
    request_id = new_request_id()
    headers = control.begin(request, body, request_id)  # 429 when full or over a limit
    prepared = await service.prepare(body, request_id)
    if body.stream:
        return _EventStream(
            _sse(control.stream(request, service.stream(prepared))),
            ping=15,
            headers=headers,
            send_timeout=30,
        )
    work = service.complete(prepared)
    response = await _until_disconnect(request, work, timeout=control.request_timeout)
    control.finish(request, response)
    return JSONResponse(response.model_dump(), headers=headers)


class _EventStream(EventSourceResponse):
    """A stream whose client stopped reading ends with a warning, not a server-error traceback.

    sse-starlette gives up on a write after ``send_timeout`` and raises; the stream's cleanup
    has already aborted the engine request. Returning leaves the response unfinished, so
    uvicorn closes the connection.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except* SendTimeoutError:
            record = request_record(Request(scope))
            record.fields["error"] = "client_stopped_reading"  # in the access log line too
            log.warning(
                "stream dropped: the client stopped reading",
                extra={"request_id": record.request_id, "send_timeout_s": self.send_timeout},
            )


async def _sse(chunks: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    async for chunk in chunks:
        yield {"data": chunk}
    yield {"data": "[DONE]"}


async def _until_disconnect(request: Request, work: Awaitable[T], timeout: float) -> T:
    """Run ``work`` but cancel it (aborting the engine request) if the client goes away
    (Starlette does not cancel a handler whose client disconnected) or ``timeout`` passes."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            task.cancel()
            raise timeout_error(timeout)
        if task not in done:
            task.cancel()
            raise asyncio.CancelledError("client disconnected")
        return task.result()
    finally:
        watcher.cancel()
        task.cancel()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[_card(m) for m in _service(request).pool])


@router.get("/v1/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> ModelCard:
    return _card(_service(request).pool.get(model_id))


def _card(model: Any) -> ModelCard:
    return ModelCard(id=model.id, created=model.created, owned_by="llama-serve")


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """503 once an engine died or a drain began (a probe's answer, not a rejection)."""
    pool = _service(request).pool
    problem = None
    if not pool.alive:
        problem = EngineDeadError("The engine has stopped; this server is restarting.")
    elif request.app.state.lifecycle.state != "serving":
        problem = ServiceUnavailableError("The server is shutting down.", code="draining")
    if problem is not None:
        return JSONResponse(problem.body(), status_code=problem.status)
    return JSONResponse({"status": "ok", "models": [m.id for m in pool]})


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(render_metrics(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/tcp_warming")
async def tcp_warming() -> dict[str, str]:
    """The Cerebras SDK calls this when a client is created, to open the connection early."""
    return {"status": "ok"}
