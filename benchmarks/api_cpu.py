"""Our API process's CPU per request and per token, under a streamed load.

Starts ``python -m server`` (from the current directory: the tree to measure) on
``smollm2-135m``, then runs ``--rounds`` rounds, each of ``--requests`` streamed requests at
``--concurrency``, with ``max_tokens`` 1 and then ``--output-len`` (``ignore_eos``, the order
alternating from round to round), and reads the server process's CPU (``/proc/<pid>/stat``)
around each. The medians give the CPU per request at one token and per 1,000 tokens at
``--output-len``; their difference over the extra tokens, the CPU per token::

    python -m benchmarks.api_cpu --rounds 4 --requests 64 --concurrency 16

With ``--layers`` the server runs under :mod:`benchmarks.layer_clock`, and each round at
``--output-len`` also prints the CPU per output token of each clocked layer (vLLM's output
processing, its stat loggers, uvicorn's send) and of each thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.procstats import cpu_seconds

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")


def _cpu_seconds(pid: int) -> float:
    seconds = cpu_seconds(pid)
    if seconds is None:
        raise SystemExit("the server exited")
    return seconds


async def _load(url: str, requests: int, concurrency: int, max_tokens: int, seed: int) -> None:
    rng = random.Random(seed)
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one() -> None:
            text = " ".join(rng.choice(WORDS) for _ in range(120))
            body = {
                "model": "smollm2-135m",
                "messages": [{"role": "user", "content": text}],
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "stream": True,
                "temperature": 0,
            }
            async with slots, client.stream("POST", url, json=body) as response:
                response.raise_for_status()
                async for _ in response.aiter_lines():
                    pass

        await asyncio.gather(*(one() for _ in range(requests)))


def _wait_healthy(base: str) -> None:
    for _ in range(600):
        try:
            if httpx.get(base + "/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit("the server did not start")


def _layers(path: Path) -> dict[str, Any]:
    """The layer clock's totals, once it has written them after now."""
    time.sleep(1.5)  # it writes each second
    return json.loads(path.read_text())


def _print_layers(before: dict[str, Any], after: dict[str, Any], tokens: int) -> None:
    def us(seconds: float) -> str:
        return f"{seconds / tokens * 1e6:7.1f} us a token"

    for name, (seconds, calls) in after["layers"].items():
        seconds_before, calls_before = before["layers"].get(name, [0.0, 0])
        print(f"  {name:42s} {us(seconds - seconds_before)}  ({calls - calls_before} calls)")
    for thread, seconds in after["threads"].items():
        spent = seconds - before["threads"].get(thread, 0.0)
        if spent > 0:
            print(f"  thread {thread:35s} {us(spent)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--server-args", default="--eager")
    parser.add_argument("--layers", action="store_true", help="clock the token path's layers")
    args = parser.parse_args()
    totals = Path(tempfile.mkdtemp()) / "layers.json"
    runner = ["benchmarks.layer_clock"] if args.layers else ["server"]
    command = [sys.executable, "-m", *runner, "--model", "smollm2-135m"]
    command += ["--port", str(args.port), *args.server_args.split()]
    env = os.environ | {"LAYER_CLOCK_OUT": str(totals)}
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        base = f"http://127.0.0.1:{args.port}"
        _wait_healthy(base)
        url = base + "/v1/chat/completions"
        asyncio.run(_load(url, 32, 16, 8, 0))  # warm up
        per_request: dict[int, list[float]] = {1: [], args.output_len: []}
        for r in range(args.rounds):
            order = (1, args.output_len) if r % 2 == 0 else (args.output_len, 1)
            for max_tokens in order:
                layers = _layers(totals) if args.layers else None
                before = _cpu_seconds(server.pid)
                asyncio.run(_load(url, args.requests, args.concurrency, max_tokens, r))
                spent = (_cpu_seconds(server.pid) - before) / args.requests
                if layers is not None and max_tokens > 1:
                    _print_layers(layers, _layers(totals), args.requests * max_tokens)
                per_request[max_tokens].append(spent)
                print(
                    f"round {r} max_tokens {max_tokens}: {spent * 1000:.2f} ms of API CPU a "
                    f"request (load average {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
        one = statistics.median(per_request[1])
        many = statistics.median(per_request[args.output_len])
        print(
            f"medians: {one * 1000:.2f} ms a request at max_tokens 1, {many * 1000:.2f} ms at "
            f"{args.output_len} ({many / args.output_len * 1000:.3f} CPU-s per 1,000 tokens), "
            f"{(many - one) / (args.output_len - 1) * 1e6:.0f} us per extra token"
        )
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
