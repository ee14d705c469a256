"""Process lifecycle: serving, draining after SIGTERM, dead after an engine failure, stopped.

SIGTERM (or Ctrl-C) starts a drain: ``/health`` answers 503 so the load balancer stops
sending traffic, new requests get 503, and in-flight requests (streams included) get up to
``drain_timeout`` seconds to finish. Then uvicorn stops and the process exits 0. A second
signal stops at once; a third skips the remaining cleanup.

uvicorn's own SIGTERM handling would close the listening socket at once (new clients see
"connection refused", not a 503) and re-raise the signal after shutdown (exit code -15), and
sse-starlette, which patches uvicorn's ``handle_exit``, cancels every open stream as soon as
uvicorn starts exiting. ``GracefulServer`` replaces the handler: the drain runs first, and
only when it ends are uvicorn and sse-starlette told to exit (which then cuts any stream still
open past the deadline).

If an engine dies (its core process crashed), the watchdog marks the server dead: ``/health``
answers 503, in-flight requests end with an engine error, and the process exits 1 so that
the orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

import uvicorn
from sse_starlette.sse import AppStatus

if TYPE_CHECKING:
    from server.models.pool import ModelPool

__all__ = ["GracefulServer", "Lifecycle", "watch_engines"]

log = logging.getLogger(__name__)

DEAD_DRAIN_SECONDS = 5.0
"""After an engine death, how long in-flight requests get to receive their error."""
DEAD_HOLD_SECONDS = 1.0
"""Then how long /health keeps answering 503 before the port closes, so probes see why."""

State = Literal["serving", "draining", "dead"]


class Lifecycle:
    def __init__(self, *, drain_timeout: float = 30.0) -> None:
        self.state: State = "serving"
        self.drain_timeout = drain_timeout
        self.exit_code = 0
        self.inflight = 0
        self._stop: Callable[[], None] = lambda: None
        self._tasks: set[asyncio.Task[None]] = set()

    def on_stop(self, stop: Callable[[], None]) -> None:
        """What stops the server once the drain is over (set by ``GracefulServer``)."""
        self._stop = stop

    def enter(self) -> None:
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1

    async def wait_idle(self, timeout: float) -> bool:
        """Until no request is in flight (True) or ``timeout`` seconds pass (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.inflight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.inflight == 0

    def drain(self) -> None:
        """Stop taking requests, let in-flight ones finish, then stop (call on the loop)."""
        if self.state != "serving":
            return
        self.state = "draining"
        log.info("draining", extra={"inflight": self.inflight, "timeout_s": self.drain_timeout})
        self._spawn(self._finish(self.drain_timeout, hold=0.0))

    def engine_died(self, models: Iterable[str]) -> None:
        """An engine is gone: refuse everything, exit non-zero (call on the loop)."""
        if self.state == "dead":
            return
        self.state = "dead"
        self.exit_code = 1
        log.error("engine died; exiting for a restart", extra={"models": list(models)})
        wait = min(self.drain_timeout, DEAD_DRAIN_SECONDS)
        self._spawn(self._finish(wait, hold=DEAD_HOLD_SECONDS))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, timeout: float, hold: float) -> None:
        drained = await self.wait_idle(timeout)
        if drained:
            log.info("drained")
        else:
            log.warning("drain timeout: cutting requests still open", extra={"n": self.inflight})
        await asyncio.sleep(hold)
        self._stop()


async def watch_engines(pool: ModelPool, lifecycle: Lifecycle, interval: float = 1.0) -> None:
    """Poll the engines; the first dead one marks the server dead."""
    while True:
        await asyncio.sleep(interval)
        dead = [model.id for model in pool if not model.engine.alive]
        if dead:
            lifecycle.engine_died(dead)
            return


class GracefulServer(uvicorn.Server):
    """uvicorn with the signal handling above."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self._loop: asyncio.AbstractEventLoop | None = None
        self._app_status = AppStatus
        # Streams are cut when *we* say so (stop), not when uvicorn starts exiting.
        AppStatus.disable_automatic_graceful_drain()
        lifecycle.on_stop(self.stop)

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it runs between two bytecodes of the event loop's thread, so it
        # only schedules work on the loop. Not recorded in _captured_signals, so uvicorn does
        # not re-raise it after shutdown (which would end the process by the signal).
        log.info("signal received", extra={"signal": signal.Signals(sig).name})
        if self.lifecycle.state == "serving" and self._loop is not None:
            self._loop.call_soon_threadsafe(self.lifecycle.drain)
        elif not self.should_exit:
            self.stop()
        else:
            self.force_exit = True

    def stop(self) -> None:
        """Exit now: uvicorn stops, sse-starlette cancels the streams still open."""
        self._app_status.should_exit = True
        self.should_exit = True
