"""How long the event loop stayed free while some work was awaited."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class Ticks:
    count: int = 0


@contextlib.asynccontextmanager
async def loop_ticks(period: float = 0.001) -> AsyncIterator[Ticks]:
    """Counts ``period`` sleeps of a task beside the body: a loop the body blocks counts none."""
    ticks = Ticks()

    async def tick() -> None:
        while True:
            await asyncio.sleep(period)
            ticks.count += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)  # the ticker starts before the body
    try:
        yield ticks
    finally:
        ticker.cancel()
