"""A stream's send timeout with one timer per stream rather than one per send.

sse-starlette wraps each send of a stream in an anyio cancel scope with a timeout, so that a
client that stops reading is given up on: a scope made and dropped for every event cost about
7.5 us an event (half of what our streaming layers spend per event; README, "The API
process's CPU per token"). Almost every send completes at once (the socket takes the bytes), so
here a send only notes when it began, and one timer per stream, due ``timeout`` after the
oldest send still waiting, cancels a send that has waited that long: the same rule, at a
timer per ``timeout`` seconds instead of one per event.
"""

from __future__ import annotations

import asyncio
import math

from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Send

__all__ = ["SendGuard"]


class SendGuard:
    """Sends of one stream, each given up on after ``timeout`` seconds (never when None);
    :meth:`close` it. The stream's data and sse-starlette's pings send from two tasks, so
    each waiting send is kept with the time it began."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = math.inf if timeout is None else timeout
        self._loop = asyncio.get_running_loop()
        self._waiting: dict[asyncio.Task[object], float] = {}
        """The sends now waiting: their task, and when they began (loop time)."""
        self._fired: set[asyncio.Task[object]] = set()
        """Tasks the timer cancelled, until their send has seen it."""
        self._timer = self._loop.call_later(self.timeout, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        for task, since in list(self._waiting.items()):
            if now >= since + self.timeout and task not in self._fired:
                self._fired.add(task)
                task.cancel()
        pending = [since for task, since in self._waiting.items() if task not in self._fired]
        # With no send waiting, none can time out before a timeout from now.
        self._timer = self._loop.call_at(min(pending, default=now) + self.timeout, self._check)

    async def send(self, send: Send, message: Message) -> None:
        """``send(message)``; ``SendTimeoutError`` when it waited ``timeout`` seconds (and was
        cancelled). A cancellation from elsewhere (the client left) stays a
        ``CancelledError``: ``asyncio.timeout``'s rule."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("SendGuard.send must run in a task")
        cancelling = task.cancelling()
        self._waiting[task] = self._loop.time()
        try:
            await send(message)
        except asyncio.CancelledError:
            if task in self._fired:
                self._fired.discard(task)
                if task.uncancel() <= cancelling:
                    raise SendTimeoutError() from None
            raise
        finally:
            del self._waiting[task]
            if task in self._fired:  # the send ended some other way after the timer cancelled it
                self._fired.discard(task)
                task.uncancel()

    def close(self) -> None:
        self._timer.cancel()
