"""An engine whose core process dies: in-flight requests get an error (a stream an error event
then [DONE]), /health answers 503, and the process exits non-zero for a restart."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from tests.support import signal_probe
from tests.support.probes import engine_requests, wait_until
from tests.support.serverproc import ServerProcess, start_server
from tests.support.sse import sse_data

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server("--model", MODEL, log_dir=tmp_path_factory.mktemp("death"))
    children = psutil.Process(proc.proc.pid).children(recursive=True)
    yield proc
    proc.stop(timeout=30)  # the test's engine death stopped it already, unless it failed
    for child in children:  # never leave an orphaned worker behind
        if child.is_running():
            child.kill()


def engine_core(pid: int) -> psutil.Process:
    cores = [
        p
        for p in psutil.Process(pid).children(recursive=True)
        if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())
    ]
    assert len(cores) == 1, [(p.pid, p.name()) for p in psutil.Process(pid).children()]
    return cores[0]


def test_engine_death_fails_requests_turns_health_503_and_exits_non_zero(
    server: ServerProcess,
) -> None:
    url = f"{server.base_url}/v1/chat/completions"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "max_tokens": 8000,  # minutes: still generating when the kill comes, after a stall too
        "ignore_eos": True,
    }
    plain: dict[str, Any] = {}
    core = engine_core(server.proc.pid)
    # /health in the seconds before the server exits is watched by a probe process: this one
    # may stall through them (CI saw it). The kill comes from here, the moment both requests
    # are generating (handed to the probe, it could come after they ended).
    probe = signal_probe.start(server.base_url)
    post = threading.Thread(target=lambda: plain.update(r=httpx.post(url, json=body, timeout=120)))
    post.start()
    wait_until(lambda: engine_requests(server.base_url) == 1, 60, "the plain request generating")
    with httpx.stream("POST", url, json=body | {"stream": True}, timeout=120) as r:
        # The engine dies while both the stream and the plain request are generating: the
        # server's count, not the events read, which this process may read minutes late.
        wait_until(lambda: engine_requests(server.base_url) == 2, 60, "both generating")
        core.kill()
        events = sse_data(r.iter_lines())
    post.join(60)
    seen = signal_probe.report(probe)
    code = server.proc.wait(60)
    health = seen["health"]["0"]

    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "engine_dead", events[-2]
    assert health["status"] == 503 and health["body"]["error"]["code"] == "engine_dead"
    assert plain["r"].status_code == 503, plain["r"].text
    assert plain["r"].json()["error"]["code"] == "engine_dead"
    assert code == 1, server.log()[-3000:]
    assert '"msg": "engine died; exiting for a restart"' in server.log()
