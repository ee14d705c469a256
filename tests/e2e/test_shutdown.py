"""SIGTERM drains: /health and new requests turn 503 at once, while a stream, a plain request
and a request still uploading its body when the signal came all finish whole; then the
process exits 0.

The upload is held open by the test, so the drain cannot end before the 503s are checked,
however fast the machine generates.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from tests.support import signal_probe
from tests.support.probes import inflight_requests, wait_until
from tests.support.serverproc import ServerProcess, start_server
from tests.support.sse import sse_data

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
TOKENS = 400  # the stream's: seconds of generation, still going when the signal comes
PLAIN_TOKENS = 1000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        "--model",
        MODEL,
        log_dir=tmp_path_factory.mktemp("drain"),
        # A slow machine still finishes in the drain, and the held upload outlasts a stalled
        # test process.
        env={"LLAMA_SERVE_DRAIN_TIMEOUT": "300", "LLAMA_SERVE_BODY_TIMEOUT": "300"},
    )
    children = psutil.Process(proc.proc.pid).children(recursive=True)
    yield proc
    proc.stop(timeout=30)  # the test stopped it already, unless it failed
    for child in children:  # never leave an engine process behind
        if child.is_running():
            child.kill()


def test_sigterm_lets_in_flight_requests_finish_then_exits_zero(server: ServerProcess) -> None:
    url = f"{server.base_url}/v1/chat/completions"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count slowly."}],
        "max_tokens": TOKENS,
        "ignore_eos": True,
        "temperature": 0,
    }
    plain: dict[str, Any] = {}
    held: dict[str, Any] = {}
    events: list[Any] = []
    release = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", url, json=body | {"stream": True}, timeout=300) as r:
            events.extend(sse_data(list(r.iter_lines())))

    uploader = threading.Thread(target=lambda: held.update(r=_held_upload(url, release)))
    uploader.start()
    wait_until(lambda: inflight_requests(server.base_url) == 1, 60, "the upload started")
    # The signal comes from a probe process once all three are in flight: this process may
    # stall long enough for the requests to end first (CI saw it).
    probe = signal_probe.start(server.base_url, pid=server.proc.pid, at_least=3)
    workers = [
        threading.Thread(
            target=lambda: plain.update(
                r=httpx.post(url, json=body | {"max_tokens": PLAIN_TOKENS}, timeout=300)
            )
        ),
        threading.Thread(target=stream),
    ]
    for worker in workers:
        worker.start()
    seen = signal_probe.report(probe)
    # The upload holds the drain open: new requests meet it whenever this process sends them.
    late = httpx.post(url, json=body | {"max_tokens": 2}, timeout=30)
    release.set()
    for worker in workers:
        worker.join(300)
    uploader.join(120)
    code = server.proc.wait(60)

    health = seen["health"]["0"]
    assert health["status"] == 503 and health["body"]["error"]["code"] == "draining"
    assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["usage"]["completion_tokens"] == TOKENS
    assert not any("error" in e for e in events[:-1])
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text
    assert plain["r"].status_code == 200
    assert plain["r"].json()["usage"]["completion_tokens"] == PLAIN_TOKENS
    assert held["r"].status_code == 200, held["r"].text
    assert held["r"].json()["usage"]["completion_tokens"] == 2
    assert code == 0, server.log()[-3000:]
    log = server.log()
    assert '"msg": "draining"' in log and '"msg": "drained"' in log
    draining = next(json.loads(line) for line in log.splitlines() if '"msg": "draining"' in line)
    assert draining["inflight"] == 3  # all three were in flight when the signal came


def _held_upload(url: str, release: threading.Event) -> httpx.Response:
    """A request whose body arrives in two parts, the second only once ``release`` is set."""
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    ).encode()

    def parts() -> Iterator[bytes]:
        yield body[:10]
        release.wait(300)  # the test's whole run on a slow machine: it sets it well before
        yield body[10:]

    headers = {"content-type": "application/json"}
    return httpx.post(url, content=parts(), headers=headers, timeout=120)
