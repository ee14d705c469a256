"""Load and faults: a soak of mixed requests, a storm of disconnecting clients, a slow reader.

Each test stops by itself (bounded in requests and time) and is sized for CI on two CPU cores;
``--soak-requests``, ``--soak-concurrency`` and ``--storm-clients`` (or their environment
variables, see tests/support/reliability_options.py) run them larger. The numbers each test measures
are printed and recorded for ``python -m tests.support.reliability``.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time

import httpx
import pytest

from tests.support.loadgen import KINDS, rss_mib, run_mix
from tests.support.probes import engine_requests, wait_idle
from tests.support.reliability_options import size
from tests.support.serverproc import ServerProcess
from tests.support.stats import record

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

MODEL = "smollm2-135m"
LONG = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Count to ten thousand."}],
    "max_tokens": 2000,
    "ignore_eos": True,
}
RSS_GROWTH_MIB = 256
"""Largest growth of the API process's memory allowed over a soak (after warm-up)."""


def probe_seconds(url: str, repeat: int = 3) -> float:
    """The best time of a short request: what "normal speed" means on this machine now."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    best = float("inf")
    for _ in range(repeat):
        started = time.monotonic()
        r = httpx.post(f"{url}/v1/chat/completions", json=body | {"ignore_eos": True}, timeout=60)
        assert r.status_code == 200, r.text
        best = min(best, time.monotonic() - started)
    return best


def test_soak_mixed_requests(smol_server: ServerProcess) -> None:
    """Plain, streamed, JSON-mode and tool-call requests at a fixed concurrency: nothing lost,
    no 5xx, every answer of the right shape, memory growth bounded."""
    url, total, concurrency = smol_server.base_url, size("soak-requests"), size("soak-concurrency")
    kinds = [list(KINDS)[i % len(KINDS)] for i in range(total)]
    random.Random(0).shuffle(kinds)
    asyncio.run(run_mix(url, list(KINDS) * concurrency, concurrency=concurrency))  # warm-up
    wait_idle(url, timeout=60)
    own_before, tree_before = rss_mib(smol_server.proc.pid)
    started = time.monotonic()
    tally = asyncio.run(run_mix(url, kinds, concurrency=concurrency))
    seconds = time.monotonic() - started
    wait_idle(url, timeout=60)
    own_after, tree_after = rss_mib(smol_server.proc.pid)

    lost, errors = tally.count("lost"), tally.count("error")
    growth = own_after - own_before
    print(f"\nsoak: {total} requests, {concurrency} at a time, {seconds:.1f} s")
    print(tally.table())
    print(f"API process RSS {own_before:.0f} -> {own_after:.0f} MiB ({growth:+.0f}); "
          f"with engine {tree_before:.0f} -> {tree_after:.0f} MiB")  # fmt: skip
    record(
        "soak",
        requests_sent=total,
        requests_served=total - lost - errors,
        requests_lost=lost,
        server_errors=errors,
        rss_growth_mib=round(growth, 1),
        rss_after_mib=round(own_after),
        seconds=round(seconds, 1),
        json_valid=tally.count("ok", "json"),
        json_cut_off=tally.count("refused", "json"),
        tool_calls=tally.count("ok", "tools"),
        streams_complete=tally.count("ok", "stream"),
    )
    assert lost == 0, tally.examples("lost")
    assert errors == 0, tally.examples("error")
    # JSON mode may be cut off by max_tokens (Cerebras's json_validate_failed); nothing else.
    refused = [o for o in tally.outcomes if o.verdict == "refused"]
    assert all(o.kind == "json" and o.detail == "json_validate_failed" for o in refused), [
        (o.kind, o.detail) for o in refused
    ][:5]
    assert tally.count("ok", "json") >= tally.count("refused", "json")
    assert growth < RSS_GROWTH_MIB


async def _storm(url: str, clients: int) -> tuple[int, int]:
    """Clients that give up: half while streaming (after 1 to 5 events), half before any
    answer (after 0.2 to 2 s, many of them still waiting in the engine's queue)."""
    rng = random.Random(1)
    dropped_streaming = dropped_waiting = 0

    async def streaming(client: httpx.AsyncClient, events: int) -> None:
        nonlocal dropped_streaming
        async with client.stream("POST", "/v1/chat/completions", json=LONG | {"stream": True}) as r:
            seen = 0
            async for line in r.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= events:
                    dropped_streaming += 1
                    return

    async def waiting(client: httpx.AsyncClient, after: float) -> None:
        nonlocal dropped_waiting
        try:
            await client.post("/v1/chat/completions", json=LONG, timeout=after)
        except httpx.TimeoutException:
            dropped_waiting += 1

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        jobs = [
            streaming(client, rng.randint(1, 5)) if i % 2 else waiting(client, rng.uniform(0.2, 2))
            for i in range(clients)
        ]
        await asyncio.gather(*jobs)
    return dropped_streaming, dropped_waiting


def test_disconnect_storm_leaves_the_engine_idle(smol_url: str) -> None:
    """Many clients drop mid-stream and mid-queue; afterwards the engine holds nothing and the
    next request is served at normal speed."""
    clients = size("storm-clients")
    wait_idle(smol_url, timeout=60)
    before = probe_seconds(smol_url)
    dropped_streaming, dropped_waiting = asyncio.run(_storm(smol_url, clients))
    settle = wait_idle(smol_url, timeout=60)
    after = probe_seconds(smol_url)
    print(f"\nstorm: {clients} clients dropped ({dropped_streaming} streaming, "
          f"{dropped_waiting} waiting); engine idle after {settle:.1f} s; "
          f"probe {before:.2f} s -> {after:.2f} s")  # fmt: skip
    record(
        "disconnect_storm",
        faults_injected=clients,
        faults_survived=clients if after < 3 * before + 1 else 0,
        requests_sent=6,  # the probes; the storm's own requests are the faults
        requests_served=6,
        idle_after_s=round(settle, 1),
        probe_before_s=round(before, 2),
        probe_after_s=round(after, 2),
    )
    assert dropped_streaming + dropped_waiting == clients
    assert after < 3 * before + 1, (before, after)


BIG = LONG | {"stream": True, "n": 4, "logprobs": True, "top_logprobs": 20}
"""A stream of ~1.7 KB events, 4 per step: it fills the kernel's buffers in seconds."""


def _slow_stream(port: int) -> socket.socket:
    """A raw connection that asks for the big stream and reads nothing yet (small receive
    buffer, so the server's sends block soon)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    content = httpx.Request("POST", "http://x", json=BIG).content
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n\r\n"
    )
    sock.sendall(head.encode() + content)
    return sock


def probes_beside_a_fast_reader(url: str, seconds: float) -> list[float]:
    """The control: short-request times while the big stream is read at full speed."""
    stop = threading.Event()

    def read() -> None:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=BIG, timeout=120) as r:
            for _ in r.iter_bytes():
                if stop.is_set():
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(1)
    times, started = [], time.monotonic()
    while time.monotonic() - started < seconds:
        times.append(probe_seconds(url, repeat=1))
    stop.set()
    reader.join(30)
    wait_idle(url, timeout=60)
    return times


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def test_slow_reader_neither_stalls_others_nor_grows_memory(smol_server: ServerProcess) -> None:
    """A client that stops reading a large stream: others are served as fast as beside a
    client that reads it at full speed, the server's memory stays flat, and the server gives
    up on the client by itself (the stream's 30 s send timeout): the engine is idle again
    while the client still holds the socket, and the stream never reached [DONE]."""
    url = smol_server.base_url
    wait_idle(url, timeout=60)
    control = median(probes_beside_a_fast_reader(url, seconds=15))
    own_before, _ = rss_mib(smol_server.proc.pid)
    log_before = len(smol_server.log())
    sock = _slow_stream(smol_server.port)
    try:
        sock.settimeout(30)
        assert b"200 OK" in sock.recv(256)  # then read nothing more
        started, times = time.monotonic(), []
        while engine_requests(url) > 0 and time.monotonic() - started < 150:
            times.append(probe_seconds(url, repeat=1))
            time.sleep(1)
        freed_after = time.monotonic() - started
        own_after, _ = rss_mib(smol_server.proc.pid)
        # The server gave up and closed its side: reading drains what the kernel buffered,
        # then ends, without the stream's [DONE].
        sock.settimeout(10)
        tail, drained = b"", 0
        while chunk := sock.recv(65536):
            drained, tail = drained + len(chunk), (tail + chunk)[-64:]
            if drained > 64 * 2**20:
                break
    finally:
        sock.close()
    growth = own_after - own_before
    idle = engine_requests(url) == 0
    # Medians: two cores are shared, and a neighbour's burst can slow any single probe.
    typical, worst = median(times), max(times)
    print(f"\nslow reader: engine idle after {freed_after:.0f} s; probes median {typical:.2f} s, "
          f"worst {worst:.2f} s (beside a fast reader: median {control:.2f} s); "
          f"API RSS {growth:+.0f} MiB; {drained} bytes were left to read")  # fmt: skip
    fast = typical < 2 * control + 0.5 and worst < 20
    record(
        "slow_reader",
        faults_injected=1,
        faults_survived=int(idle and fast and growth < 64),
        requests_sent=len(times),  # the probes beside the slow reader
        requests_served=len(times),
        dropped_after_s=round(freed_after),
        probe_median_s=round(typical, 2),
        probe_median_control_s=round(control, 2),
        rss_growth_mib=round(growth, 1),
        kernel_buffered_bytes=drained,
    )
    assert idle, "the server still holds the slow reader's request"
    assert fast, (control, typical, worst)
    assert growth < 64, growth
    assert drained < 64 * 2**20
    assert b"[DONE]" not in tail, "the stream ran to its end: the send timeout was not tested"
    # The server's doing, not a server error: one warning line (and the access line's
    # reason), no traceback.
    log = smol_server.log()[log_before:]
    assert '"msg": "stream dropped: the client stopped reading"' in log, log[-3000:]
    assert '"error": "client_stopped_reading"' in log
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
