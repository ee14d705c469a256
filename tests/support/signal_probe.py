"""A small process that watches a server's /health on each API process and reports the first
answer that is not 200 from each; it may also send a signal to a server's process the moment a
gauge of its /metrics reaches a value.

Drain and engine-death tests must act while requests are still running, then see /health
answer 503 in the seconds before the server exits. The test process is no place to wait for
either moment: in CI it stalled for 30 s and more while its servers went on (its threads read
seconds of output at once; streams it meant to interrupt had ended). This process imports only
the standard library and sleeps between polls, so it acts on time; the test reads its report
whenever it gets to it.

It holds one kept-alive connection to each API process, made at its start while the server is
idle (a new connection goes to the least loaded process, so a few tries reach each one), and
polls them from then on (uvicorn closes a connection idle for 5 s). :func:`start` returns once
they are made, so a test may act at once. An engine-death test kills the core itself the moment
its stream is generating: when the kill was handed to this process, a CI stream ran its 3,000
tokens to the end first (a 116 s test; the hand-off pinned the connections before killing).

From a test: :func:`start`, then :func:`report`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from tests.support.metrics_text import series_values

__all__ = ["report", "start"]

POLL_SECONDS = 0.05
TIMEOUT = 300.0
PROCESS_HEADER = "x-api-process"
PINNED = "pinned"


def start(
    base_url: str,
    *,
    pid: int | None = None,
    sig: signal.Signals = signal.SIGTERM,
    gauge: str = "llama_serve_inflight_requests",
    at_least: int = 1,
    processes: int = 1,
) -> subprocess.Popen[str]:
    """The probe, started and holding a connection to each of ``processes`` API processes.
    Given a ``pid``, it sends it ``sig`` once ``gauge`` (summed over its series) is at least
    ``at_least``."""
    command = [sys.executable, "-m", "tests.support.signal_probe", base_url]
    command += ["--processes", str(processes)]
    if pid is not None:
        command += ["--pid", str(pid), "--signal", sig.name]
        command += ["--gauge", gauge, "--at-least", str(at_least)]
    probe = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert probe.stdout is not None
    line = probe.stdout.readline().strip()
    assert line == PINNED, f"the probe did not start: {line!r}"
    return probe


def report(probe: subprocess.Popen[str], timeout: float = TIMEOUT) -> dict[str, Any]:
    """What the probe saw: ``gauge``, the value when it signalled, and ``health``, per API
    process index, the first /health answer that was not 200 (``status`` and ``body``)."""
    out, _ = probe.communicate(timeout=timeout)
    assert probe.returncode == 0, out
    return dict(json.loads(out))


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, str, str]:
    conn.request("GET", path)
    answer = conn.getresponse()
    return answer.status, answer.read().decode(), answer.getheader(PROCESS_HEADER, "0")


def _gauge(host: str, port: int, name: str) -> float:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        text = _get(conn, "/metrics")[1]
    finally:
        conn.close()
    return sum(series_values(text, name))


def _pinned(host: str, port: int, indexes: list[str]) -> dict[str, http.client.HTTPConnection]:
    """One kept-alive connection to each API process in ``indexes`` (a new connection goes to
    the least loaded one, so a few tries reach them all)."""
    pinned: dict[str, http.client.HTTPConnection] = {}
    for _ in range(50):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        index = _get(conn, "/health")[2]
        if index in pinned or index not in indexes:
            conn.close()
        else:
            pinned[index] = conn
        if len(pinned) == len(indexes):
            return pinned
    raise SystemExit(f"reached only API processes {sorted(pinned)} of {indexes}")


def _watch(
    host: str, port: int, pinned: dict[str, http.client.HTTPConnection], health: dict[str, Any]
) -> None:
    """One /health poll of each process not yet seen answering other than 200. A connection
    the server closed (this process stalled past uvicorn's keep-alive) is made again."""
    for index, conn in list(pinned.items()):
        if index in health:
            continue
        try:
            status, body, _ = _get(conn, "/health")
        except OSError:
            conn.close()
            try:
                pinned.update(_pinned(host, port, [index]))
                status, body, _ = _get(pinned[index], "/health")
            except OSError as exc:  # the server went before this process saw it answer
                raise SystemExit(f"API process {index}: {exc!r}; seen so far: {health}") from exc
        if status != 200:
            health[index] = {"status": status, "body": json.loads(body)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--pid", type=int)
    parser.add_argument("--signal")
    parser.add_argument("--gauge")
    parser.add_argument("--at-least", type=int, default=1)
    args = parser.parse_args()
    url = urlsplit(args.base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80

    pinned = _pinned(host, port, [str(i) for i in range(args.processes)])
    print(PINNED, flush=True)
    health: dict[str, Any] = {}
    value = None
    deadline = time.monotonic() + TIMEOUT
    if args.pid is not None:
        while (value := _gauge(host, port, args.gauge)) < args.at_least:
            if time.monotonic() > deadline:
                raise SystemExit(f"{args.gauge} never reached {args.at_least} (last {value:g})")
            _watch(host, port, pinned, health)  # keeps the connections alive
            time.sleep(POLL_SECONDS)
        os.kill(args.pid, signal.Signals[args.signal])
    while len(health) < len(pinned):
        if time.monotonic() > deadline:
            raise SystemExit(f"/health answered only 200 on API processes {sorted(pinned)}")
        _watch(host, port, pinned, health)
        time.sleep(POLL_SECONDS)
    print(json.dumps({"gauge": value, "health": health}))


if __name__ == "__main__":
    main()
