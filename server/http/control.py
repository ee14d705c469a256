"""What the generating routes (chat and text completions) wrap around their service:
admission (and Cerebras's ``queue_threshold`` for flex and auto requests), per-key rate
limits, the request deadline and the client's disconnect, and the access-log fields (model,
user, cache key, tier, tokens, timings).

The services stay about generating. A route calls ``begin``, hands ``service.prepare`` to
``prepare`` (a grammar's compile may wait there), then the service's work to ``answer`` (a
plain answer) or its chunks to ``stream``: all three run under one deadline, counted from
``begin``, and all end the request's work when the client leaves.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, Protocol, TypeVar

from starlette.requests import Request

from server.common.protocol import TimeInfo, Usage
from server.errors import (
    APIError,
    BadRequestError,
    InternalError,
    QueueThresholdError,
    RequestTimeoutError,
)
from server.http.admission import Admission
from server.http.deadline import StreamDeadline
from server.http.gate import AccessRecord, request_record
from server.http.ratelimit import RateLimiter

__all__ = ["Answer", "Controlled", "RequestControl"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Controlled(Protocol):
    """What control reads of a request."""

    @property
    def model(self) -> str: ...
    @property
    def stream(self) -> bool | None: ...
    @property
    def user(self) -> str | None: ...
    @property
    def prompt_cache_key(self) -> str | None: ...
    @property
    def service_tier(self) -> str | None: ...
    def logged_prompt(self) -> dict[str, Any]:
        """The prompt's access-log fields (with ``log_prompts``)."""
        ...


class Answer(Protocol):
    """What control reads of a response or chunk: its usage and timings, for the log."""

    @property
    def usage(self) -> Usage | None: ...
    @property
    def time_info(self) -> TimeInfo | None: ...


A = TypeVar("A", bound=Answer)

ANONYMOUS = "anonymous"
"""The rate-limit bucket of requests when no API keys are configured."""
QUEUE_THRESHOLD_MS = (50, 20000)
"""The values Cerebras accepts in the ``queue_threshold`` header: milliseconds of queueing."""
QUEUED_TIERS = frozenset({"flex", "auto"})
"""The tiers ``queue_threshold`` applies to (Cerebras: only these may be refused for it)."""


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

    def begin(self, request: Request, body: Controlled, request_id: str) -> dict[str, str]:
        """Admit the request (429 when its model is full or its key over a limit) and note
        it for the access log; the response headers to send."""
        record = request_record(request)
        record.fields |= {"id": request_id, "model": body.model, "stream": bool(body.stream)}
        if body.user is not None:
            record.fields["user"] = body.user
        if body.prompt_cache_key is not None:
            record.fields["prompt_cache_key"] = body.prompt_cache_key
        tier = body.service_tier
        if tier is not None:
            record.fields["service_tier"] = tier
        if self.log_prompts:
            record.fields |= body.logged_prompt()
        headers = {"x-request-id": record.client_request_id or request_id}
        request.state.deadline = asyncio.get_running_loop().time() + self.request_timeout
        threshold = queue_threshold(request)
        if threshold is not None and tier in QUEUED_TIERS:
            self._check_queue(body.model, threshold)
        ticket = self.admission.acquire(body.model)
        record.cleanups.append(ticket.release)  # the Gate runs it when the response is sent
        if self.limiter.enabled:
            headers |= self.limiter.admit(record.key_id or ANONYMOUS)
        return headers

    def _check_queue(self, model: str, threshold: float) -> None:
        """QueueThresholdError (429) when the model's queue would hold a new request longer
        than ``threshold`` seconds."""
        wait = self.admission.expected_wait(model)
        if wait > threshold:
            retry = max(1, math.ceil(wait - threshold))
            raise QueueThresholdError(
                f"The expected queue time for '{model}' ({wait * 1000:.0f} ms) is longer than "
                f"queue_threshold ({threshold * 1000:.0f} ms). Retry after {retry} s.",
                headers={"Retry-After": str(retry)},
            )

    async def prepare(self, request: Request, work: Awaitable[T]) -> T:
        """``work``'s result (the service's preparation: a grammar's compile may wait in it),
        under the request's deadline and ended by the client's leaving, like :meth:`answer`."""
        return await self._race(request, work)

    async def answer(self, request: Request, work: Awaitable[A]) -> A:
        """``work``'s answer, noted for the access log. Past the deadline the work is cancelled
        (aborting the engine request) and a 504 raised; a client that leaves cancels it too
        (Starlette does not cancel a handler whose client disconnected)."""
        response = await self._race(request, work)
        self._note(request_record(request), response.usage, response.time_info)
        return response

    async def _race(self, request: Request, work: Awaitable[T]) -> T:
        """``work``'s result, or a 504 past the deadline, or CancelledError when the client
        leaves; ``work`` is cancelled in both cases."""
        task = asyncio.ensure_future(work)
        left = asyncio.ensure_future(_disconnected(request))
        try:
            async with asyncio.timeout_at(self._deadline(request)):
                await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise self._timeout() from None
        finally:
            left.cancel()
            task.cancel()  # a no-op once it is done
        if not task.done():
            raise asyncio.CancelledError("client disconnected")
        return task.result()

    async def stream(
        self, request: Request, chunks: AsyncGenerator[A, None]
    ) -> AsyncIterator[A | APIError]:
        """The service's chunks until the deadline; an error, whether the deadline's or the
        service's, ends the stream as one last event (the route adds [DONE]). The final
        chunk's usage and time_info go to the access log. A client that leaves is seen by
        sse-starlette, which cancels this iteration and so the engine request."""
        record = request_record(request)
        deadline = StreamDeadline(self._deadline(request))  # one timer, not one per chunk
        usage: Usage | None = None
        timing: TimeInfo | None = None
        try:
            while True:
                try:
                    chunk = await deadline.next(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    # The cancellation went through the service's generator into the
                    # engine's, which aborted the request.
                    yield self._failed(record, self._timeout())
                    break
                except APIError as exc:
                    yield self._failed(record, exc)
                    break
                except Exception as exc:
                    log.exception("stream failed", extra={"request_id": record.request_id})
                    yield self._failed(
                        record, InternalError(f"The stream failed: {type(exc).__name__}")
                    )
                    break
                usage = chunk.usage or usage
                timing = chunk.time_info or timing
                yield chunk
        finally:
            deadline.close()
            await chunks.aclose()
            self._note(record, usage, timing)

    def _deadline(self, request: Request) -> float:
        """Set by ``begin``; a request that skipped it gets the whole timeout from now."""
        deadline = getattr(request.state, "deadline", None)
        if deadline is None:
            return asyncio.get_running_loop().time() + self.request_timeout
        return float(deadline)

    def _timeout(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"The request took longer than the server's limit of {self.request_timeout:g} s "
            "and was stopped."
        )

    @staticmethod
    def _failed(record: AccessRecord, error: APIError) -> APIError:
        record.note_error(error)
        return error

    def _note(self, record: AccessRecord, usage: Usage | None, timing: TimeInfo | None) -> None:
        if usage is not None:
            record.fields["usage"] = usage.model_dump(exclude_none=True)
            key = record.key_id or ANONYMOUS
            self.limiter.add_tokens(key, usage.total_tokens, usage.uncached_tokens)
        if timing is not None:
            record.fields["time_info"] = timing.model_dump()
            engine_seconds = timing.prompt_time + timing.completion_time
            self.admission.observe(record.fields.get("model", ""), engine_seconds)


def queue_threshold(request: Request) -> float | None:
    """The ``queue_threshold`` header in seconds (none when absent); a value Cerebras would
    not accept is a 400 naming it."""
    value = request.headers.get("queue_threshold")
    if value is None:
        return None
    low, high = QUEUE_THRESHOLD_MS
    text = value.strip()
    # The length first: int() of a long digit string is slow, and refused past 4,300 digits.
    if not (len(text) <= 5 and text.isascii() and text.isdigit() and low <= int(text) <= high):
        raise BadRequestError(
            f"The queue_threshold header must be a whole number of milliseconds from {low} to "
            f"{high}; got {value[:32]!r}.",
            param="queue_threshold",
        )
    return int(text) / 1000


async def _disconnected(request: Request) -> None:
    while True:
        message: Any = await request.receive()
        if message["type"] == "http.disconnect":
            return
