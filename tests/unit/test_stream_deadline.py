"""StreamDeadline: a stream's deadline kept by one timer for the whole stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.http.deadline import StreamDeadline


async def _then_stuck(n: int, ended: list[str]) -> AsyncIterator[int]:
    try:
        for i in range(n):
            yield i
        await asyncio.Event().wait()  # the engine produces nothing more
        yield n
    except asyncio.CancelledError:
        ended.append("cancelled")  # the engine request is aborted here
        raise


def test_a_wait_past_the_deadline_is_cancelled_and_times_out() -> None:
    async def run() -> tuple[list[int], list[str]]:
        ended: list[str] = []
        items = _then_stuck(3, ended)
        deadline = StreamDeadline(asyncio.get_running_loop().time() + 0.05)
        got = []
        try:
            with pytest.raises(TimeoutError):
                while True:
                    got.append(await deadline.next(items))
        finally:
            deadline.close()
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the timer's cancel is undone
        return got, ended

    assert asyncio.run(run()) == ([0, 1, 2], ["cancelled"])


def test_a_deadline_that_passes_between_waits_ends_the_next_one() -> None:
    async def run() -> None:
        items = _then_stuck(3, [])
        deadline = StreamDeadline(asyncio.get_running_loop().time() + 0.01)
        try:
            assert await deadline.next(items) == 0
            await asyncio.sleep(0.05)  # the consumer holds the chunk past the deadline
            with pytest.raises(TimeoutError):
                await deadline.next(items)
        finally:
            deadline.close()
            await items.aclose()

    asyncio.run(run())


def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def run() -> None:
        deadline = StreamDeadline(asyncio.get_running_loop().time() + 30)
        items = _then_stuck(0, [])
        try:
            waiter = asyncio.create_task(deadline.next(items))
            await asyncio.sleep(0)
            waiter.cancel()  # the client left
            with pytest.raises(asyncio.CancelledError):
                await waiter
        finally:
            deadline.close()

    asyncio.run(run())


def test_the_end_of_the_items_passes_through() -> None:
    async def run() -> None:
        async def two() -> AsyncIterator[int]:
            yield 1

        deadline = StreamDeadline(asyncio.get_running_loop().time() + 30)
        items = two()
        try:
            assert await deadline.next(items) == 1
            with pytest.raises(StopAsyncIteration):
                await deadline.next(items)
        finally:
            deadline.close()

    asyncio.run(run())
