"""Every kind of body the server sends, read raw over HTTP and validated against OpenAI's own
OpenAPI document (tests/data/openai-openapi), so a client generated from it with strict
decoding reads ours: answers plain, with ``n`` and logprobs, in JSON mode, with a schema and
with a tool call; every chunk of a stream, the usage chunk included; error bodies, one sent
mid-stream included; models.

Raw httpx, not an SDK: the SDKs' parsers drop or default what the document forbids.
Errors that need a guarded server (401, 429, a deadline's 504) are checked in
tests/e2e/test_cerebras_errors.py with the same checker.

A new endpoint's bodies are one line each: an ``Answer`` in ``ANSWERS`` (its path and
schemas), a ``Refusal`` in ``REFUSALS``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support.openai_schema import assert_conforms
from tests.support.sse import sse_data

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]
ERROR = "ErrorResponse"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": CITY},
}
CALL_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
COMPLETION_SCHEMAS = {
    "schema": "CreateCompletionResponse",
    "chunk_schema": "CreateCompletionStreamResponse",
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}


def request_body(path: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A small seeded request to ``path`` (chat: one user message) with ``fields`` on top."""
    base = {"model": MODEL, "max_tokens": 16, "seed": 7}
    return base | ({"messages": HELLO} if path == CHAT else {}) | fields


@dataclass(frozen=True)
class Answer:
    """One kind of successful answer: the request and the schemas of its body and chunks."""

    id: str
    fields: dict[str, Any] = field(default_factory=dict)
    path: str = CHAT
    schema: str = "CreateChatCompletionResponse"
    chunk_schema: str | None = "CreateChatCompletionStreamResponse"
    """None: the request is refused when streamed (see REFUSALS)."""


@dataclass(frozen=True)
class Refusal:
    """One kind of error answer: the request, its status, and its ``error.code`` if fixed."""

    id: str
    status: int
    fields: dict[str, Any]
    path: str = CHAT
    code: str | None = None


ANSWERS = [
    Answer("plain"),
    Answer("n_logprobs", {"n": 2, "logprobs": True, "top_logprobs": 3, "temperature": 1.0}),
    Answer("length", {"max_tokens": 3, "ignore_eos": True}),
    # JSON mode does not stream, as on Cerebras (a 400 in REFUSALS).
    Answer(
        "json_object",
        {"response_format": {"type": "json_object"}, "max_tokens": 48},
        chunk_schema=None,
    ),
    Answer("json_schema", {"response_format": JSON_SCHEMA, "max_tokens": 48}, chunk_schema=None),
    Answer("tool_call", {"tools": [WEATHER], "tool_choice": CALL_WEATHER, "max_tokens": 120}),
    Answer("tools_unused", {"tools": [WEATHER], "tool_choice": "none"}),
    Answer("service_tier_auto", {"service_tier": "auto"}),
    Answer("completion", {"prompt": "Hi"}, path=COMPLETIONS, **COMPLETION_SCHEMAS),
    Answer(
        "completion_token_ids",
        {"prompt": [[1, 2, 3], [4, 5]]},
        path=COMPLETIONS,
        **COMPLETION_SCHEMAS,
    ),
    Answer(
        "completion_echo_logprobs",
        {"prompt": ["Hi", "Yo"], "n": 2, "echo": True, "logprobs": 2, "temperature": 1.0},
        path=COMPLETIONS,
        **COMPLETION_SCHEMAS,
    ),
]
STREAMED = [a for a in ANSWERS if a.chunk_schema is not None]

REFUSALS = [
    Refusal("bad_temperature", 400, {"temperature": 5}),
    Refusal("no_messages", 400, {"messages": []}),
    Refusal("missing_model", 400, {"model": None}),
    Refusal("json_mode_stream", 400, {"response_format": {"type": "json_object"}, "stream": True}),
    Refusal("unknown_model", 404, {"model": "no-such-model"}, code="model_not_found"),
    Refusal("too_large", 413, {"user": "x" * (5 * 2**20)}, code="request_too_large"),  # > 4 MiB
    Refusal("bad_tier", 400, {"service_tier": "gold"}),
    Refusal("completion_suffix", 400, {"prompt": "Hi", "suffix": "x"}, path=COMPLETIONS),
    Refusal("completion_no_prompt", 400, {"prompt": []}, path=COMPLETIONS),
]


@pytest.fixture(scope="module")
def http(smol_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=smol_url, timeout=120) as client:
        yield client


def _stream(http: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    """Every event of a 200 stream, JSON-decoded; it must end with ``[DONE]``."""
    with http.stream("POST", path, json=body | {"stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_data(r.iter_lines())
    assert events[-1] == "[DONE]"
    return events[:-1]


def choice_count(case: Answer) -> int:
    """``n`` per prompt: a completions request with a list of prompts has a choice per each."""
    prompt = case.fields.get("prompt")
    several = isinstance(prompt, list) and prompt and not isinstance(prompt[0], int)
    return (len(prompt) if several else 1) * case.fields.get("n", 1)


@pytest.mark.parametrize("case", ANSWERS, ids=[a.id for a in ANSWERS])
def test_answer_conforms(http: httpx.Client, case: Answer) -> None:
    r = http.post(case.path, json=request_body(case.path, case.fields))
    assert r.status_code == 200, r.text
    body = r.json()
    assert_conforms(body, case.schema)
    assert len(body["choices"]) == choice_count(case)
    if case.path != CHAT:
        return
    messages = [choice["message"] for choice in body["choices"]]
    if case.id == "n_logprobs":
        assert all(len(c["logprobs"]["content"][0]["top_logprobs"]) == 3 for c in body["choices"])
    if case.id == "tool_call":
        (call,) = messages[0]["tool_calls"]
        assert json.loads(call["function"]["arguments"]).keys() == {"city"}
    else:  # OpenAI leaves the field out when there are no calls (the schema allows an array)
        assert all("tool_calls" not in m for m in messages)


@pytest.mark.parametrize("case", STREAMED, ids=[a.id for a in STREAMED])
def test_every_chunk_conforms(http: httpx.Client, case: Answer) -> None:
    assert case.chunk_schema is not None
    body = request_body(case.path, case.fields) | {"stream_options": {"include_usage": True}}
    chunks = _stream(http, case.path, body)
    for chunk in chunks:
        assert_conforms(chunk, case.chunk_schema)
    *content, usage_chunk = chunks
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] > 0
    # OpenAI's habit: finish_reason null on every chunk of a choice but its last.
    choices = [choice for chunk in content for choice in chunk["choices"]]
    for index in range(choice_count(case)):
        reasons = [c["finish_reason"] for c in choices if c["index"] == index]
        assert reasons[-1] is not None and set(reasons[:-1]) == {None}, reasons
    if case.id == "tool_call":
        calls = [tc for c in choices for tc in c["delta"].get("tool_calls", [])]
        assert calls and calls[0]["function"]["name"] == "get_weather"


def test_stream_without_usage_conforms(http: httpx.Client) -> None:
    chunks = _stream(http, CHAT, request_body(CHAT, {}))
    for chunk in chunks:
        assert_conforms(chunk, "CreateChatCompletionStreamResponse")
    assert all(chunk["choices"] for chunk in chunks)


def test_error_event_mid_stream_conforms(http: httpx.Client) -> None:
    """A named tool call cut off by max_tokens fails after the stream began: its chunks so
    far, then the error as an event (a 400's body: the SDKs raise from it)."""
    body = request_body(CHAT, {"tools": [WEATHER], "tool_choice": CALL_WEATHER, "max_tokens": 4})
    *chunks, error = _stream(http, CHAT, body)
    assert chunks, "the stream should fail after it began"
    for chunk in chunks:
        assert_conforms(chunk, "CreateChatCompletionStreamResponse")
    assert_conforms(error, ERROR)
    assert error["error"]["code"] == "json_validate_failed" and error["status_code"] == 400


@pytest.mark.parametrize("case", REFUSALS, ids=[r.id for r in REFUSALS])
def test_error_conforms(http: httpx.Client, case: Refusal) -> None:
    body = {k: v for k, v in request_body(case.path, case.fields).items() if v is not None}
    r = http.post(case.path, json=body)
    assert r.status_code == case.status, r.text
    assert_conforms(r.json(), ERROR)
    assert case.code is None or r.json()["error"]["code"] == case.code


def test_malformed_json_conforms(http: httpx.Client) -> None:
    r = http.post(CHAT, content=b'{"model": ', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert_conforms(r.json(), ERROR)


def test_unknown_route_and_model_lookup_conform(http: httpx.Client) -> None:
    for path in ("/v1/no-such-route", "/v1/models/no-such-model"):
        r = http.get(path)
        assert r.status_code == 404
        assert_conforms(r.json(), ERROR)


def test_models_conform(http: httpx.Client) -> None:
    listed = http.get("/v1/models")
    assert listed.status_code == 200
    assert_conforms(listed.json(), "ListModelsResponse")
    assert [m["id"] for m in listed.json()["data"]] == [MODEL]
    one = http.get(f"/v1/models/{MODEL}")
    assert one.status_code == 200
    assert_conforms(one.json(), "Model")
    assert one.json() == listed.json()["data"][0]
