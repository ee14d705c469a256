"""A signal to a server's process the moment a gauge of its /metrics reaches a value (or the
test says so), sent by a small process of its own, which then reports the first /health
answer that is not 200 from each API process.

Drain and engine-death tests must act while requests are still running, then see /health
answer 503 in the seconds before the server exits. The test process is no place to wait for
either moment: in CI it stalled for 30 s and more while its servers went on (its threads read
seconds of output at once; streams it meant to interrupt had ended). This process imports only
the standard library and sleeps between polls, so it acts on time; the test reads its report
whenever it gets to it.

From a test: :func:`start`, :func:`go` when there is no gauge to wait for, then
:func:`report`.
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

__all__ = ["go", "report", "start"]

POLL_SECONDS = 0.05
TIMEOUT = 300.0
PROCESS_HEADER = "x-api-process"


def start(
    base_url: str,
    pid: int,
    *,
    gauge: str | None = "llama_serve_inflight_requests",
    at_least: int = 1,
    sig: signal.Signals = signal.SIGTERM,
    processes: int = 1,
) -> subprocess.Popen[str]:
    """The probe, started: it sends ``sig`` to ``pid`` once ``gauge`` (summed over its series)
    is at least ``at_least``, or with no gauge once :func:`go` is called; then it watches
    /health on each of ``processes`` API processes."""
    command = [sys.executable, "-m", "tests.support.signal_probe", base_url, str(pid)]
    if gauge is not None:
        command += ["--gauge", gauge, "--at-least", str(at_least)]
    command += ["--signal", sig.name, "--processes", str(processes)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def go(probe: subprocess.Popen[str]) -> None:
    """Tell a probe with no gauge to act now."""
    assert probe.stdin is not None
    probe.stdin.write("go\n")
    probe.stdin.flush()


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


def _pinned(host: str, port: int, processes: int) -> dict[str, http.client.HTTPConnection]:
    """One kept-alive connection to each API process (a new connection goes to the least
    loaded one, so a few tries reach them all)."""
    pinned: dict[str, http.client.HTTPConnection] = {}
    for _ in range(50):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        index = _get(conn, "/health")[2]
        if index in pinned:
            conn.close()
        else:
            pinned[index] = conn
        if len(pinned) == processes:
            return pinned
    raise SystemExit(f"reached only API processes {sorted(pinned)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url")
    parser.add_argument("pid", type=int)
    parser.add_argument("--gauge")
    parser.add_argument("--at-least", type=int, default=1)
    parser.add_argument("--signal", required=True)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    url = urlsplit(args.base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80

    value = None
    if args.gauge is None:
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("never told to go")
    else:
        deadline = time.monotonic() + TIMEOUT
        while (value := _gauge(host, port, args.gauge)) < args.at_least:
            if time.monotonic() > deadline:
                raise SystemExit(f"{args.gauge} never reached {args.at_least} (last {value:g})")
            time.sleep(POLL_SECONDS)
    pinned = _pinned(host, port, args.processes)
    os.kill(args.pid, signal.Signals[args.signal])
    health: dict[str, Any] = {}
    while len(health) < len(pinned):
        for index, conn in pinned.items():
            if index not in health:
                status, body, _ = _get(conn, "/health")
                if status != 200:
                    health[index] = {"status": status, "body": json.loads(body)}
        time.sleep(POLL_SECONDS)
    print(json.dumps({"gauge": value, "health": health}))


if __name__ == "__main__":
    main()
