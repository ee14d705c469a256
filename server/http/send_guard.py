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
    :meth:`close` it."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = math.inf if timeout is None else timeout
        self._loop = asyncio.get_running_loop()
        self._since: float | None = None
        """When the send now waiting began (loop time), or None between sends."""
        self._task: asyncio.Task[object] | None = None
        self._fired = False
        """True once the timer cancelled the send now waiting, until that send has seen it."""
        self._timer = self._loop.call_later(self.timeout, self._check)

    def _check(self) -> None:
        since = self._since
        if since is None:  # no send waits: none can time out before a timeout from now
            self._timer = self._loop.call_later(self.timeout, self._check)
        elif self._loop.time() >= since + self.timeout and self._task is not None:
            self._fired = True
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(since + self.timeout, self._check)

    async def send(self, send: Send, message: Message) -> None:
        """``send(message)``; ``SendTimeoutError`` when it waited ``timeout`` seconds (and was
        cancelled). A cancellation from elsewhere (the client left) stays a
        ``CancelledError``: ``asyncio.timeout``'s rule."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("SendGuard.send must run in a task")
        cancelling = task.cancelling()
        self._task, self._since = task, self._loop.time()
        try:
            await send(message)
        except asyncio.CancelledError:
            if self._fired:
                self._fired = False
                if task.uncancel() <= cancelling:
                    raise SendTimeoutError() from None
            raise
        finally:
            self._since = None
            if self._fired:  # the send ended some other way after the timer cancelled it
                self._fired = False
                task.uncancel()
                self._timer = self._loop.call_later(self.timeout, self._check)

    def close(self) -> None:
        self._timer.cancel()
