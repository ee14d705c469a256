"""A request the engine ends on its own is an error, never an answer.

The engine here gets a one-second limit for building an Outlines grammar
(``VLLM_REGEX_COMPILATION_TIMEOUT_S=1``), while the server's own compile check has more: JSON
mode's index over SmolLM2's vocabulary takes about five seconds, so the check passes and the
engine then fails the request itself (vLLM's finish reason ``error``). The client must see a 500
``engine_error`` in the error envelope (an error event then ``[DONE]`` in a stream), counted in
``/metrics``; and the server goes on serving other requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.serverproc import ServerProcess, start_server
from tests.support.sse import sse_data

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
HELLO = [{"role": "user", "content": "Say hello."}]
# Any object as the arguments: the call's grammar holds JSON mode's, so it is as slow to build.
ANY_ARGUMENTS_TOOL = {
    "type": "function",
    "function": {"name": "record", "parameters": {"type": "object"}},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        "--model",
        MODEL,
        "--structured-output-backend",
        "outlines",
        # Room for the server's own check of the slow tool grammar on a loaded machine.
        "--grammar-timeout",
        "120",
        log_dir=tmp_path_factory.mktemp("engine-failure"),
        env={"VLLM_REGEX_COMPILATION_TIMEOUT_S": "1"},
    )
    yield proc
    proc.stop()


def engine_errors(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith('llama_serve_rejected_requests_total{reason="engine_error"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no engine_error series in /metrics")


def test_a_request_the_engine_fails_is_a_500_not_an_answer(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        before = engine_errors(client)
        r = client.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": HELLO,
                "response_format": {"type": "json_object"},
                "max_tokens": 20,
            },
        )
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("api_error", "engine_error")
        assert "Traceback" not in r.text
        assert engine_errors(client) == before + 1
        # The engine lives on: an unconstrained request is answered.
        ok = client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "max_tokens": 5}
        )
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in (
            "stop",
            "length",
        )
        assert client.get("/health").status_code == 200


def test_a_stream_the_engine_fails_ends_with_an_error_event(server: ServerProcess) -> None:
    body = {
        "model": MODEL,
        "messages": HELLO,
        "tools": [ANY_ARGUMENTS_TOOL],
        "tool_choice": "required",
        "max_tokens": 40,
        "stream": True,
    }
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        before = engine_errors(client)
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            events = sse_data(r.iter_lines())
        assert events[-1] == "[DONE]"
        error = events[-2]["error"]
        assert (error["type"], error["code"]) == ("api_error", "engine_error")
        # Nothing before it claims to be an answer: no finish_reason, no tool call.
        for chunk in events[:-2]:
            for choice in chunk["choices"]:
                assert choice.get("finish_reason") is None
                assert not choice["delta"].get("tool_calls")
        assert engine_errors(client) == before + 1


def test_vllm_logs_its_failure_as_json_lines(server: ServerProcess) -> None:
    """vLLM's own lines, its engine core's included, go through the server's JSON handler."""
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": HELLO, "response_format": {"type": "json_object"}},
        )
        assert r.status_code == 500
    failures = [
        json.loads(line)
        for line in server.log().splitlines()
        if "Failed to compile grammar" in line
    ]
    assert failures, "the engine core did not log its failure"
    for failure in failures:
        assert failure["level"] == "error" and failure["logger"].startswith("vllm.")
        assert "ValueError: Regex compilation timed out" in failure["exc"]
