"""Load shapes: a closed loop at fixed concurrency, or Poisson arrivals at a request rate.

Either stops after a number of requests or after a duration (no new request is sent after
the deadline; those in flight finish and count). The wall time of a run runs from the first
send to the last completion, as in ``vllm.benchmarks.serve``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tqdm import tqdm

from benchmarks.records import RequestRecord

__all__ = ["LoadShape", "Sender", "run_load"]

Sender = Callable[[RequestRecord], Awaitable[None]]
"""Fills one record (its ``index`` picks the prompt) by sending the request."""


@dataclass(frozen=True)
class LoadShape:
    """How requests are issued. Set ``concurrency`` for a closed loop, or ``rate`` (requests
    per second, Poisson arrivals) for an open loop where ``concurrency`` then caps the
    requests in flight. Set ``num_requests``, ``duration_s`` or both (whichever ends first)."""

    concurrency: int | None = None
    rate: float | None = None
    num_requests: int | None = None
    duration_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.concurrency is None and self.rate is None:
            raise ValueError("a load shape needs a concurrency or a request rate")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("the request rate must be positive")
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("a load shape needs a number of requests or a duration")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError("the number of requests must be at least 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ValueError("the duration must be positive")

    @property
    def label(self) -> str:
        """``concurrency 8`` or ``rate 2/s`` (with its cap): names a point of a sweep."""
        if self.rate is None:
            return f"concurrency {self.concurrency}"
        cap = f" max {self.concurrency}" if self.concurrency else ""
        return f"rate {self.rate:g}/s{cap}"


async def run_load(
    shape: LoadShape, send: Sender, progress: bool = True, desc: str = ""
) -> tuple[list[RequestRecord], float]:
    """Issue requests in ``shape``; return the records (in send order) and the wall time."""
    bar = tqdm(total=shape.num_requests, desc=desc, unit="req", disable=not progress)
    start = time.perf_counter()
    deadline = start + shape.duration_s if shape.duration_s is not None else None
    records: list[RequestRecord] = []

    async def one(index: int) -> None:
        record = RequestRecord(index=index, start=time.perf_counter() - start)
        records.append(record)
        await send(record)
        bar.update(1)

    try:
        if shape.rate is None:
            await _closed_loop(shape, one, deadline)
        else:
            await _open_loop(shape, one, start, deadline)
    finally:
        bar.close()
    return records, time.perf_counter() - start


def _more(index: int, shape: LoadShape, deadline: float | None, at: float) -> bool:
    if shape.num_requests is not None and index >= shape.num_requests:
        return False
    return deadline is None or at < deadline


async def _closed_loop(
    shape: LoadShape, one: Callable[[int], Awaitable[None]], deadline: float | None
) -> None:
    counter = itertools.count()

    async def worker() -> None:
        while _more(index := next(counter), shape, deadline, time.perf_counter()):
            await one(index)

    assert shape.concurrency is not None  # checked in LoadShape.__post_init__
    await asyncio.gather(*(worker() for _ in range(shape.concurrency)))


async def _open_loop(
    shape: LoadShape,
    one: Callable[[int], Awaitable[None]],
    start: float,
    deadline: float | None,
) -> None:
    assert shape.rate is not None  # checked in LoadShape.__post_init__
    rng = random.Random(shape.seed)
    gate = asyncio.Semaphore(shape.concurrency) if shape.concurrency else None

    async def gated(index: int) -> None:
        if gate is None:
            await one(index)
            return
        async with gate:
            await one(index)

    tasks: list[asyncio.Task[None]] = []
    due = start
    for index in itertools.count():
        if not _more(index, shape, deadline, due):
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(gated(index)))
        due += rng.expovariate(shape.rate)
    await asyncio.gather(*tasks)
