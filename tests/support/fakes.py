"""A stand-in ChatService (no engine) and an in-process client for the real app: the routes,
middleware, error handlers and lifespan run as in production, generation is scripted."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx

from server.app import create_app
from server.chat.protocol import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    Delta,
    ResponseMessage,
)
from server.common.chunks import ChunkTemplate, Encoded
from server.common.protocol import TimeInfo, Usage
from server.errors import ModelNotFoundError
from server.settings import Settings

__all__ = ["MODEL", "FakeService", "chat", "running", "sse_events"]

MODEL = "fake-model"
USAGE = Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10)
TIMING = TimeInfo(
    queue_time=0.01, prompt_time=0.02, completion_time=0.03, total_time=0.07, created=1
)


class FakeEngine:
    alive = True
    kv_cache_tokens = 4096

    unfinished_requests = 0

    def shutdown(self) -> None:
        pass


class FakePool:
    def __init__(self, max_num_seqs: int) -> None:
        config = SimpleNamespace(
            max_num_seqs=max_num_seqs, tensor_parallel_size=1, pipeline_parallel_size=1
        )
        self.model = SimpleNamespace(
            id=MODEL, config=config, engine=FakeEngine(), created=0, grammar=None
        )

    def __iter__(self) -> Any:
        return iter([self.model])

    def get(self, model_id: str) -> Any:
        if model_id != MODEL:
            raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")
        return self.model

    @property
    def alive(self) -> bool:
        return self.model.engine.alive


class FakeService:
    """Answers "hi" (3 chunks when streamed); ``delay`` seconds per step; while ``hold`` is
    set to an Event, generation waits for it."""

    def __init__(self, *, max_num_seqs: int = 4, delay: float = 0.0) -> None:
        self.pool = FakePool(max_num_seqs)
        self.delay = delay
        self.hold: asyncio.Event | None = None
        self.started = 0
        self.closed = 0  # generations that ended early (cancelled or closed)

    async def warm_up(self) -> None:
        pass

    async def prepare(self, body: Any, request_id: str, arrival: float) -> Any:
        self.pool.get(body.model)
        return SimpleNamespace(request=body, request_id=request_id)

    async def _step(self) -> None:
        if self.hold is not None:
            await self.hold.wait()
        await asyncio.sleep(self.delay)

    async def complete(self, prep: Any) -> ChatCompletionResponse:
        self.started += 1
        try:
            await self._step()
        except asyncio.CancelledError:
            self.closed += 1
            raise
        choice = Choice(index=0, message=ResponseMessage(content="hi"), finish_reason="stop")
        return ChatCompletionResponse(
            id=prep.request_id,
            model=MODEL,
            system_fingerprint="fp",
            choices=[choice],
            usage=USAGE,
            time_info=TIMING,
        )

    async def stream(self, prep: Any) -> AsyncIterator[Encoded]:
        """Serialized chunks, as the real service sends them."""
        self.started += 1
        finished = False
        envelope = {"id": prep.request_id, "created": 0, "model": MODEL, "system_fingerprint": "fp"}
        template = ChunkTemplate(ChatCompletionChunk, envelope)
        try:
            for text in ("h", "i"):
                await self._step()
                yield template.of([ChunkChoice(index=0, delta=Delta(content=text))])
            final = [ChunkChoice(index=0, delta=Delta(), finish_reason="stop")]
            yield template.of(final, usage=USAGE, time_info=TIMING)
            finished = True
        finally:
            if not finished:
                self.closed += 1


@contextlib.asynccontextmanager
async def running(
    service: FakeService | None = None, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The real app around ``service``, started (lifespan) and reachable in-process."""
    service = service or FakeService()
    app = create_app(lambda: service, Settings(**settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    return body | extra


def sse_events(text: str) -> list[Any]:
    """The data of each SSE event, JSON-decoded except [DONE]."""
    events = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events
