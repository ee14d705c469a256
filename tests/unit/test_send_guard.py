"""SendGuard: sse-starlette's per-send timeout kept by one timer per stream."""

from __future__ import annotations

import asyncio

import pytest
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message

from server.http.send_guard import SendGuard


async def _instant(message: Message) -> None:
    await asyncio.sleep(0)


async def _stuck(message: Message) -> None:
    await asyncio.Event().wait()  # a client that stopped reading: the write never completes


def test_a_send_that_waits_past_the_timeout_raises_send_timeout() -> None:
    async def run() -> list[int]:
        guard = SendGuard(0.05)
        sent = []
        try:
            for i in range(3):
                await guard.send(_instant, {"i": i})
                sent.append(i)
            with pytest.raises(SendTimeoutError):
                await guard.send(_stuck, {})
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0  # the timer's cancel is undone
        finally:
            guard.close()
        return sent

    assert asyncio.run(run()) == [0, 1, 2]


def test_each_send_has_its_own_timeout_not_the_stream() -> None:
    """Sends that each complete within the timeout never time out, however long the stream."""

    async def run() -> int:
        guard = SendGuard(0.2)
        sent = 0

        async def idle_then_send(message: Message) -> None:
            await asyncio.sleep(0)

        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 0.6  # three timeouts long
            while loop.time() < end:
                await guard.send(idle_then_send, {})
                sent += 1
                await asyncio.sleep(0.01)  # between sends the timer finds no send waiting
        finally:
            guard.close()
        return sent

    assert asyncio.run(run()) > 0


def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def run() -> None:
        guard = SendGuard(30)
        try:
            sender = asyncio.create_task(guard.send(_stuck, {}))
            await asyncio.sleep(0)
            sender.cancel()  # the client left: sse-starlette cancels the stream's task
            with pytest.raises(asyncio.CancelledError):
                await sender
        finally:
            guard.close()

    asyncio.run(run())


def test_no_timeout_never_gives_up() -> None:
    async def run() -> None:
        guard = SendGuard(None)
        try:
            await guard.send(_instant, {})
        finally:
            guard.close()

    asyncio.run(run())


def test_a_send_stuck_in_another_task_times_out_too() -> None:
    """sse-starlette's ping sends from its own task while the data send waits: the older send
    times out at its own time, and a newer send does not hide it."""

    async def run() -> None:
        guard = SendGuard(0.1)
        try:
            data = asyncio.create_task(guard.send(_stuck, {}))
            await asyncio.sleep(0.05)
            ping = asyncio.create_task(guard.send(_stuck, {}))
            with pytest.raises(SendTimeoutError):
                await data
            assert not ping.done()  # its own timeout is later
            with pytest.raises(SendTimeoutError):
                await ping
        finally:
            guard.close()

    asyncio.run(run())
