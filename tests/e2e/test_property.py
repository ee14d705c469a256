"""Property tests: random and mutated chat requests never break the server.

Hypothesis builds requests that are valid (every role, text with special-token spellings and
any Unicode, sampling fields in range, tools, streaming): each gets a 200 whose body parses as
the documented response (or a well-formed event stream). It also mutates them (a field dropped,
retyped, out of range, unknown, nested, huge): each gets a 2xx as above or a 4xx in the error
envelope. Never a 5xx, and the server stays healthy. ``PROPERTY_EXAMPLES`` sets the
number of requests per test (default 40).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.chat.protocol import ChatCompletionChunk, ChatCompletionResponse
from tests.support.reliability_options import size
from tests.support.stats import record

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

MODEL = "smollm2-135m"
EXAMPLES = size("property-examples")
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
SPELLINGS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|python_tag|>"]

text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(SPELLINGS),
    st.lists(st.sampled_from([*SPELLINGS, "user", "\n", " ", "hi"]), max_size=8).map("".join),
)
parts = st.lists(st.builds(lambda t: {"type": "text", "text": t}, text), max_size=3)
content = st.one_of(text, parts)
tool_names = st.from_regex(r"[a-zA-Z0-9_-]{1,20}", fullmatch=True)
token_ids = st.integers(0, 49151).map(str)  # SmolLM2's vocabulary


@st.composite
def tools(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(tool_names, min_size=1, max_size=3, unique=True))
    kinds = st.sampled_from(["string", "integer", "number", "boolean"])
    result = []
    for name in names:
        props = draw(st.dictionaries(tool_names, kinds.map(lambda k: {"type": k}), max_size=3))
        schema = {"type": "object", "properties": props, "required": sorted(props)[:1]}
        result.append({"type": "function", "function": {"name": name, "parameters": schema}})
    return result


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    turns: list[dict[str, Any]] = []
    if draw(st.booleans()):
        role = draw(st.sampled_from(["system", "developer"]))
        turns.append({"role": role, "content": draw(text)})
    for _ in range(draw(st.integers(0, 2))):
        turns.append({"role": "user", "content": draw(content)})
        turns.append({"role": "assistant", "content": draw(text)})
    turns.append({"role": "user", "content": draw(content)})
    body: dict[str, Any] = {"model": MODEL, "messages": turns}
    body["max_tokens"] = draw(st.integers(1, 4))
    optional = {
        "temperature": st.floats(0, 1.5),
        "top_p": st.floats(0.01, 1),
        "top_k": st.integers(-1, 50),
        "min_p": st.floats(0, 1),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "stop": st.one_of(text.filter(bool), st.lists(text.filter(bool), max_size=4)),
        "frequency_penalty": st.floats(-2, 2),
        "presence_penalty": st.floats(-2, 2),
        "repetition_penalty": st.floats(0.5, 2),
        "logit_bias": st.dictionaries(token_ids, st.floats(-100, 100), max_size=3),
        "logprobs": st.booleans(),
        "top_logprobs": st.integers(0, 5),
        "stream": st.booleans(),
        "user": text,
        "metadata": st.dictionaries(text, text, max_size=2),
        "tools": tools(),
    }
    for key in sorted(draw(st.sets(st.sampled_from(sorted(optional)), max_size=5))):
        body[key] = draw(optional[key])
    if "tools" in body:
        body["tool_choice"] = draw(st.sampled_from(["auto", "none", "required"]))
    if body.get("temperature", 1) != 0 and draw(st.booleans()):
        body["n"] = 2
    return body


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into ``value`` (keys and indexes), including the root's children."""
    found = []
    if isinstance(value, dict):
        items: Any = value.items()
    else:
        items = enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        found.append((*prefix, key))
        found += _paths(child, (*prefix, key))
    return found


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.just("x" * 5000),
    # A fresh list each time: mutations edit values in place, and a shared one would change
    # what later examples draw (hypothesis then fails with FlakyStrategyDefinition).
    st.builds(lambda: json.loads("[" * 20 + "]" * 20)),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@st.composite
def mutated_requests(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(valid_requests())
    body["max_tokens"] = 2
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(body)
        path = draw(st.sampled_from(paths))
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "unknown key"]))
        if action == "delete" and path[-1] != "max_tokens":
            del parent[path[-1]]
        elif action == "unknown key" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(JUNK)
        elif path[-1] != "max_tokens":
            parent[path[-1]] = draw(JUNK)
    return body


def check_answer(client: httpx.Client, body: dict[str, Any], *, valid: bool) -> None:
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        payload = r.read()
    record("property", cases=1, requests_sent=1, requests_served=int(r.status_code < 500))
    assert r.status_code < 500, payload[:2000]
    assert r.status_code == 200 or not valid, payload[:2000]
    if r.status_code >= 400:
        error = json.loads(payload)["error"]
        assert {"message", "type", "param", "code"} <= set(error), error
        return
    assert r.status_code == 200
    if r.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in payload.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", events[-3:]
        for data in events[:-1]:
            event = json.loads(data)
            assert "error" not in event, event
            ChatCompletionChunk.model_validate(event)
    else:
        ChatCompletionResponse.model_validate_json(payload)


@pytest.fixture(scope="module")
def client(smol_url: str) -> httpx.Client:
    with httpx.Client(base_url=smol_url, timeout=120) as c:
        yield c


@SETTINGS
@given(body=valid_requests())
def test_valid_requests_are_answered(client: httpx.Client, body: dict[str, Any]) -> None:
    check_answer(client, body, valid=True)


@SETTINGS
@given(body=mutated_requests())
def test_mutated_requests_get_2xx_or_an_enveloped_4xx(
    client: httpx.Client, body: dict[str, Any]
) -> None:
    check_answer(client, body, valid=False)


def test_server_is_healthy_afterwards(client: httpx.Client) -> None:
    assert client.get("/health").json()["status"] == "ok"
