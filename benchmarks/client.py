"""One Chat Completions request over HTTP, timed, into a :class:`RequestRecord`.

Uses one shared ``httpx.AsyncClient`` without a connection cap (the load generator is the
only thing that limits concurrency). Errors never raise: they become the record's ``error``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from benchmarks.records import RequestRecord
from benchmarks.scenarios import Scenario, check_output
from benchmarks.sse import DONE, SSEParser

__all__ = ["ChatClient", "StreamState", "classify_error", "normalize_base_url"]


def normalize_base_url(url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` both become the ``/v1`` base."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


def classify_error(status: int, body: bytes | str | Mapping[str, Any]) -> tuple[str, str]:
    """Error class and message of a non-200 answer or of an error event in a stream.

    ``failed_generation`` (Cerebras and Groq: the model's output broke the requested format,
    reported as HTTP 400 with ``error.failed_generation``) is told apart from other errors.
    """
    data: Any = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = {}
    error = data.get("error") if isinstance(data, Mapping) else None
    error = error if isinstance(error, Mapping) else {}
    message = str(error.get("message") or body)[:300]
    if "failed_generation" in error or (isinstance(data, Mapping) and "failed_generation" in data):
        return "failed_generation", message
    return (f"http_{status}" if status != 200 else "stream_error"), message


class StreamState:
    """Accumulates one streamed answer from its SSE ``data`` payloads: content, tool calls,
    timings (seconds since the request was sent, as given to :meth:`handle`), usage.

    Only chunks that carry generated output (content, reasoning or tool-call deltas) are
    tokens: the opening role chunk and the closing usage chunk are not, so TTFT is the time
    to the first real token however early a server sends its role chunk."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.first: float | None = None
        self.last: float | None = None
        self.itls: list[float] = []
        self.chunks = 0
        self.data: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self.error: tuple[str, str] | None = None

    def handle(self, payload: str, now: float) -> None:
        """Take one event's data received at ``now``."""
        if payload.strip() == DONE:
            return
        try:
            data = json.loads(payload)
        except json.JSONDecodeError:
            self.error = ("stream_error", f"bad JSON event: {payload[:200]}")
            return
        if "error" in data:
            self.error = classify_error(200, data)
            return
        for key in ("usage", "time_info"):
            if data.get(key):
                self.data[key] = data[key]
        for choice in data.get("choices") or []:
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
            if self._take(choice.get("delta") or {}):
                if self.last is not None:
                    self.itls.append(now - self.last)
                self.first = now if self.first is None else self.first
                self.last = now
                self.chunks += 1

    def _take(self, delta: Mapping[str, Any]) -> bool:
        """Store the delta; whether it carried generated output (a role chunk does not)."""
        produced = False
        if delta.get("content"):
            self.content.append(delta["content"])
            produced = True
        if delta.get("reasoning_content") or delta.get("reasoning"):
            produced = True
        for call in delta.get("tool_calls") or []:
            slot = self.tool_calls.setdefault(
                call.get("index", 0), {"id": None, "function": {"name": "", "arguments": ""}}
            )
            slot["id"] = call.get("id") or slot["id"]
            function = call.get("function") or {}
            slot["function"]["name"] += function.get("name") or ""
            slot["function"]["arguments"] += function.get("arguments") or ""
            produced = True
        return produced


class ChatClient:
    """Sends Chat Completions requests to one endpoint and times them."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = normalize_base_url(base_url) + "/chat/completions"
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            headers={**auth, **(headers or {})},
        )

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def send(self, record: RequestRecord, body: dict[str, Any], scenario: Scenario) -> None:
        """Send ``body``; fill ``record`` with status, timings, usage and the output check."""
        start = time.perf_counter()
        try:
            if body.get("stream"):
                await self._stream(record, body, scenario, start)
            else:
                await self._plain(record, body, scenario, start)
        except httpx.TimeoutException as exc:
            record.error, record.error_message = "timeout", repr(exc)[:300]
        except httpx.HTTPError as exc:
            record.error, record.error_message = "connection", repr(exc)[:300]

    async def _plain(
        self, record: RequestRecord, body: dict[str, Any], scenario: Scenario, start: float
    ) -> None:
        response = await self._http.post(self.url, json=body)
        record.status = response.status_code
        record.latency = time.perf_counter() - start
        if response.status_code != 200:
            record.error, record.error_message = classify_error(
                response.status_code, response.content
            )
            return
        data = response.json()
        choice = (data.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        record.finish_reason = choice.get("finish_reason")
        self._usage(record, data.get("usage"), fallback=0)
        record.time_info = data.get("time_info")
        record.invalid = check_output(
            scenario, message.get("content"), message.get("tool_calls") or [], record.finish_reason
        )

    async def _stream(
        self, record: RequestRecord, body: dict[str, Any], scenario: Scenario, start: float
    ) -> None:
        async with self._http.stream("POST", self.url, json=body) as response:
            record.status = response.status_code
            if response.status_code != 200:
                record.error, record.error_message = classify_error(
                    response.status_code, await response.aread()
                )
                return
            parser, state = SSEParser(), StreamState()
            async for chunk in response.aiter_bytes():
                now = time.perf_counter() - start
                for event in parser.feed(chunk):
                    state.handle(event.data, now)
            for event in parser.flush():
                state.handle(event.data, time.perf_counter() - start)
        record.latency = time.perf_counter() - start
        record.ttft, record.last_token, record.itls = state.first, state.last, state.itls
        record.finish_reason = state.finish_reason
        record.time_info = state.data.get("time_info")
        self._usage(record, state.data.get("usage"), fallback=state.chunks)
        if state.error is not None:
            record.error, record.error_message = state.error
            return
        calls = [state.tool_calls[i] for i in sorted(state.tool_calls)]
        record.invalid = check_output(scenario, "".join(state.content), calls, state.finish_reason)

    @staticmethod
    def _usage(record: RequestRecord, usage: Mapping[str, Any] | None, fallback: int) -> None:
        usage = usage or {}
        record.output_tokens = int(usage.get("completion_tokens") or fallback)
        if usage.get("prompt_tokens") is not None:
            record.prompt_tokens = int(usage["prompt_tokens"])
