"""CPU our streaming layers spend per event and per stream, in process, without an engine.

A generator of ready chunks (one ``asyncio.sleep(0)`` each, standing in for the engine's
queue) feeds what a streamed request runs through after the service: the request's control
(deadline, access-log fields), the route's SSE framing and the SSE response (sse-starlette, its
send timeout), down to an ASGI ``send`` that takes the bytes at once. CPU time
(``time.process_time``) of ``--streams`` streams of 65 events and of 1 event, less the same
generator alone; per event is the difference over 64 events. The best of ``--repeats``::

    python -m benchmarks.stream_layers
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.types import Message

from server.common.chunks import Encoded
from server.http.control import RequestControl
from server.http.routes import _EventStream, _sse

CHUNK = Encoded(
    b'{"id":"chatcmpl-x","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":" word"},"finish_reason":null,"logprobs":null}]}'
)


async def _chunks(n: int) -> AsyncIterator[Encoded]:
    for _ in range(n):
        await asyncio.sleep(0)
        yield CHUNK


async def _stream(control: RequestControl, n: int) -> None:
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "state": {}}
    request = Request(scope)
    request.state.deadline = asyncio.get_running_loop().time() + 600
    never = asyncio.Event()

    async def receive() -> Message:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    events = _sse(control.stream(request, _chunks(n)))
    await _EventStream(events, ping=15, send_timeout=30, sep="\n")(scope, receive, send)


async def _source_only(n: int) -> None:
    async for _ in _chunks(n):
        pass


async def _seconds(streams: int, repeats: int, n: int, control: RequestControl) -> float:
    """Our layers' CPU seconds per stream of ``n`` events, the source's own taken off."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name in ("source", "ours"):
            started = time.process_time()
            for _ in range(streams):
                await (_source_only(n) if name == "source" else _stream(control, n))
            spent = (time.process_time() - started) / streams
            best[name] = min(best.get(name, spent), spent)
    return best["ours"] - best["source"]


async def _main(streams: int, repeats: int) -> None:
    # A stream without usage or timings never reaches admission or the rate limiter.
    control = RequestControl(admission=None, limiter=None, request_timeout=600)  # type: ignore[arg-type]
    one = await _seconds(streams, repeats, 1, control)
    many = await _seconds(streams, repeats, 65, control)
    print(f"per stream {one * 1e6:.0f} us, per event {(many - one) / 64 * 1e6:.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(_main(args.streams, args.repeats))


if __name__ == "__main__":
    main()
