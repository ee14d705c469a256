"""A stream's deadline with one timer for the whole stream.

``asyncio.timeout`` around each wait for a chunk made and dropped a timer per chunk. Here one
timer per stream does the same: at the deadline a wait in progress is cancelled and becomes a
``TimeoutError``, as ``asyncio.timeout`` would make it; a deadline that passes between waits
(while the consumer sends a chunk) ends the next wait before it starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

__all__ = ["StreamDeadline"]

T = TypeVar("T")


class StreamDeadline:
    """Waits for an async iterator's items until the loop time ``when``; :meth:`close` it."""

    def __init__(self, when: float) -> None:
        self.expired = False
        self._waiting: asyncio.Task[object] | None = None
        self._fired = False
        """True once the timer cancelled the wait in progress, until that wait has seen it."""
        self._timer = asyncio.get_running_loop().call_at(when, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self._waiting is not None:
            self._fired = True
            self._waiting.cancel()

    async def next(self, items: AsyncIterator[T]) -> T:
        """``items``' next item; ``TimeoutError`` past the deadline, the wait cancelled.
        A cancellation from elsewhere stays a ``CancelledError`` (``asyncio.timeout``'s rule)."""
        if self.expired:
            raise TimeoutError
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("StreamDeadline.next must run in a task")
        cancelling = task.cancelling()
        self._waiting = task
        try:
            return await anext(items)
        except asyncio.CancelledError:
            if self._fired:
                self._fired = False
                if task.uncancel() <= cancelling:
                    raise TimeoutError from None
            raise
        finally:
            self._waiting = None
            if self._fired:  # the wait ended some other way after the timer cancelled it
                self._fired = False
                task.uncancel()

    def close(self) -> None:
        self._timer.cancel()
