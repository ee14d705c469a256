"""``--api-processes 2``: two API processes share one engine core. Load is served by both (each
one's access-log lines carry its index), ``/metrics`` adds up both, SIGTERM drains both with
nothing lost, and a dead engine core turns ``/health`` to 503 on both and the server exits 1."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
from openai import AsyncOpenAI

from server.processes import PROCESS_HEADER
from tests.support import signal_probe
from tests.support.metrics_text import series_values
from tests.support.probes import engine_requests, wait_until
from tests.support.serverproc import ServerProcess, start_server
from tests.support.sse import sse_data

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
PROCESSES = 2
REQUESTS, CONCURRENCY = 200, 32

DRAIN_TOKENS = 600
"""Per stream of the drain test: half a minute of generation here, so every stream is still
running when the last one arrives (CI once saw one arrive 8 s after the others)."""


def _start(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[ServerProcess]:
    server = start_server(
        "--model",
        MODEL,
        "--api-processes",
        str(PROCESSES),
        log_dir=tmp_path_factory.mktemp(name),
        env={"LLAMA_SERVE_DRAIN_TIMEOUT": "300"},  # a slow machine still finishes in the drain
    )
    # /health answered once one process was ready; the other may still be loading.
    wait_until(lambda: len(_lines(server, "ready")) == PROCESSES, 600, "both processes ready")
    children = psutil.Process(server.proc.pid).children(recursive=True)
    yield server
    server.stop(timeout=60)  # the tests stop it already, unless one failed
    for child in children:  # never leave an engine core or API process behind
        if child.is_running():
            child.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _start(tmp_path_factory, "multi")


@pytest.fixture(scope="module")
def doomed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _start(tmp_path_factory, "multi-death")


def _lines(server: ServerProcess, msg: str) -> list[dict[str, Any]]:
    """The server's JSON log lines whose ``msg`` is ``msg``."""
    needle = f'"msg": "{msg}"'
    return [json.loads(t) for t in server.log().splitlines() if t.startswith("{") and needle in t]


def _total(text: str, name: str, **labels: str) -> float:
    """The sum of the series ``name`` in a /metrics text whose labels include ``labels``."""
    return sum(series_values(text, name, **labels))


def _stream_body(max_tokens: int) -> dict[str, Any]:
    """A stream that generates exactly ``max_tokens`` tokens."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count slowly."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }


def _metrics(server: ServerProcess) -> str:
    return httpx.get(f"{server.base_url}/metrics", timeout=10).text


def test_load_is_served_by_both_processes_and_metrics_add_up(server: ServerProcess) -> None:
    before = _metrics(server)
    sent = [f"multi-{i}" for i in range(REQUESTS)]

    async def run() -> list[Any]:
        client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(request_id: str) -> Any:
            async with gate:
                return await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Say something."}],
                    max_tokens=8,
                    extra_headers={"x-request-id": request_id},
                )

        async with client:
            return await asyncio.gather(*(one(r) for r in sent))

    answers = asyncio.run(run())
    after, scrapes = _metrics_once_settled(server, before, REQUESTS)

    tokens = sum(a.usage.completion_tokens for a in answers)
    assert len(answers) == REQUESTS and all(a.choices[0].message is not None for a in answers)
    # Each process's access log shows its share (the line carries its index and pid).
    wait_until(
        lambda: len([x for x in _lines(server, "request") if x["request_id"] in sent]) >= REQUESTS,
        60,
        "every request's access-log line",
    )
    lines = [x for x in _lines(server, "request") if x["request_id"] in sent]
    by_process = Counter(x["api_process"] for x in lines)
    assert set(by_process) == set(range(PROCESSES)), by_process
    assert all(x["status"] == 200 for x in lines)
    assert len({x["pid"] for x in lines}) == PROCESSES
    # /metrics, answered by either process, counts both: the 200 answers, each once, plus the
    # earlier scrapes (each counted once it was sent: the last ones may not be yet).
    responses = _total(after, "llama_serve_http_responses_total", status="200")
    counted = responses - _total(before, "llama_serve_http_responses_total", status="200")
    assert REQUESTS <= counted <= REQUESTS + scrapes, (counted, scrapes)
    successes = _total(after, "vllm:request_success_total") - _total(
        before, "vllm:request_success_total"
    )
    assert successes == REQUESTS
    generated = _total(after, "vllm:generation_tokens_total") - _total(
        before, "vllm:generation_tokens_total"
    )
    assert generated == tokens
    assert _total(after, "llama_serve_inflight_requests") == 0


def _metrics_once_settled(
    server: ServerProcess, before: str, requests: int, timeout: float = 60
) -> tuple[str, int]:
    """/metrics once every answered request has left both processes (the inflight gauge, which
    each process publishes every 0.25 s, is 0: a process counts a response when it leaves,
    a moment after the client read it) and the engine counted ``requests`` more successes;
    and how many scrapes that took (each is a 200 response too)."""
    deadline, scrapes = time.monotonic() + timeout, 0
    while True:
        text, scrapes = _metrics(server), scrapes + 1
        success = _total(text, "vllm:request_success_total")
        settled = _total(text, "llama_serve_inflight_requests") == 0 and (
            success - _total(before, "vllm:request_success_total") >= requests
        )
        if settled or time.monotonic() > deadline:
            return text, scrapes
        time.sleep(0.3)


def test_sigterm_drains_both_processes_with_nothing_lost(server: ServerProcess) -> None:
    streams, tokens = 8, DRAIN_TOKENS
    body = _stream_body(tokens)
    results: list[tuple[str, list[Any]]] = []

    def stream() -> None:
        url = f"{server.base_url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=300) as r:
            results.append((r.headers[PROCESS_HEADER], sse_data(list(r.iter_lines()))))

    # The signal comes from a probe process once all eight are in flight: this process may
    # stall long enough for the streams to end first (CI saw it).
    probe = signal_probe.start(
        server.base_url,
        pid=server.proc.pid,
        at_least=streams,
        processes=PROCESSES,
    )
    threads = [threading.Thread(target=stream) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    seen = signal_probe.report(probe)
    code = server.proc.wait(120)

    assert sorted(seen["health"]) == [str(i) for i in range(PROCESSES)]
    for health in seen["health"].values():  # each process's /health
        assert health["status"] == 503 and health["body"]["error"]["code"] == "draining"
    assert len(results) == streams
    assert {index for index, _ in results} == {str(i) for i in range(PROCESSES)}
    for _, events in results:
        assert events[-1] == "[DONE]"
        assert not any("error" in e for e in events[:-1])
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        assert events[-2]["usage"]["completion_tokens"] == tokens
    assert code == 0, server.log()[-3000:]
    draining = _lines(server, "draining")
    assert sorted(x["api_process"] for x in draining) == list(range(PROCESSES))
    assert sum(x["inflight"] for x in draining) == streams
    assert sorted(x["api_process"] for x in _lines(server, "drained")) == list(range(PROCESSES))


def test_engine_death_turns_health_503_on_both_processes_and_exits_1(
    doomed: ServerProcess,
) -> None:
    (core,) = [
        p
        for p in psutil.Process(doomed.proc.pid).children()
        if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())
    ]
    # /health on each process in the seconds before the server exits is watched by a probe
    # process: this one may stall through them (CI saw it). The kill comes from here, the
    # moment the engine holds the stream (handed to the probe, it once came after the
    # stream's end).
    probe = signal_probe.start(doomed.base_url, processes=PROCESSES)
    url = f"{doomed.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=_stream_body(8000), timeout=120) as r:
        # Generating by the server's count, not by the events read, which this process may
        # read minutes late; 8,000 tokens outlast such a stall.
        wait_until(lambda: engine_requests(doomed.base_url) == 1, 60, "generating")
        core.kill()
        events = sse_data(r.iter_lines())
    seen = signal_probe.report(probe)
    code = doomed.proc.wait(60)

    assert sorted(seen["health"]) == [str(i) for i in range(PROCESSES)]
    for health in seen["health"].values():
        assert health["status"] == 503 and health["body"]["error"]["code"] == "engine_dead"
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "engine_dead", events[-2]
    assert code == 1, doomed.log()[-3000:]
    died = _lines(doomed, "engine died; exiting for a restart")
    assert sorted(x["api_process"] for x in died) == list(range(PROCESSES))
    assert _lines(doomed, "engine core died")
