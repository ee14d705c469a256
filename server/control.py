"""What the chat route wraps around the service: admission, per-key rate limits, the request
deadline, and the access-log fields (model, user, tokens, timings).

The service stays about chat; the route calls ``begin`` before ``service.prepare``, and hands
the service's result to ``finish`` (plain answers) or wraps its chunks in ``stream``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from server.admission import Admission
from server.errors import RequestTimeoutError
from server.gate import RequestRecord, request_record
from server.metrics import count_rejected
from server.ratelimit import RateLimiter

__all__ = ["RequestControl", "timeout_error"]

ANONYMOUS = "anonymous"
"""The rate-limit bucket of requests when no API keys are configured."""


def timeout_error(seconds: float) -> RequestTimeoutError:
    return RequestTimeoutError(
        f"The request took longer than the server's limit of {seconds:g} s and was stopped."
    )


class RequestControl:
    def __init__(
        self,
        *,
        admission: Admission,
        limiter: RateLimiter,
        request_timeout: float,
        log_prompts: bool = False,
    ) -> None:
        self.admission = admission
        self.limiter = limiter
        self.request_timeout = request_timeout
        self.log_prompts = log_prompts

    def begin(self, request: Request, body: Any, request_id: str) -> dict[str, str]:
        """Admit the request (429 when its model is full or its key over a limit) and note
        it for the access log; the response headers to send."""
        record = request_record(request)
        record.fields |= {"id": request_id, "model": body.model, "stream": bool(body.stream)}
        if body.user is not None:
            record.fields["user"] = body.user
        if self.log_prompts:
            record.fields["messages"] = [m.model_dump(exclude_none=True) for m in body.messages]
        headers = {"x-request-id": record.client_request_id or request_id}
        ticket = self.admission.acquire(body.model)
        record.cleanups.append(ticket.release)  # the Gate runs it when the response is sent
        if self.limiter.enabled:
            headers |= self.limiter.admit(record.key_id or ANONYMOUS)
        return headers

    def finish(self, request: Request, response: Any) -> None:
        """Note a plain answer's tokens and timings."""
        self._note(request_record(request), response.usage.model_dump(), response.time_info)

    def _note(self, record: RequestRecord, usage: dict[str, Any] | None, timing: Any) -> None:
        if usage:
            record.fields["usage"] = usage
            self.limiter.add_tokens(record.key_id or ANONYMOUS, usage.get("total_tokens", 0))
        if timing is not None:
            record.fields["time_info"] = timing if isinstance(timing, dict) else timing.model_dump()

    async def stream(self, request: Request, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        """The service's chunks, cut at the deadline with an error event (the route adds
        [DONE]); the final chunk's usage and time_info go to the access log."""
        record = request_record(request)
        deadline = asyncio.get_running_loop().time() + self.request_timeout
        usage, timing = None, None
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    # The cancellation went through the service's generator into the
                    # engine's, which aborted the request.
                    count_rejected("timeout")
                    error = timeout_error(self.request_timeout)
                    record.fields["error"] = error.code
                    yield json.dumps(error.body())
                    break
                if '"usage"' in chunk or chunk.startswith('{"error"'):
                    data = json.loads(chunk)
                    usage = data.get("usage") or usage
                    timing = data.get("time_info") or timing
                    if "error" in data:
                        record.fields["error"] = data["error"].get("code")
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
            self._note(record, usage, timing)
