"""A catalogue of hostile inputs, each with the exact status and error it must get.

Every case runs against the real server (smollm2-135m); after each one the server must still
answer ``/health``. The limits are the defaults in ``server/settings.py`` (README "Limits").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.chat.protocol import MAX_TOOLS
from tests.support.serverproc import ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

MODEL = "smollm2-135m"
MIB = 2**20
BASE = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client(smol_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=smol_url, timeout=120) as c:
        yield c


@pytest.fixture(autouse=True)
def still_healthy(client: httpx.Client) -> Iterator[None]:
    yield
    assert client.get("/health").status_code == 200


def expect(r: httpx.Response, status: int, *, code: Any = ..., param: Any = ...) -> dict:
    """The status, the OpenAI envelope, and (when given) its code and param."""
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert error["message"] and "Traceback" not in r.text
    if code is not ...:
        assert error["code"] == code, error
    if param is not ...:
        assert error["param"] == param, error
    return error


def chat(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json=BASE | fields)


def raw(client: httpx.Client, body: bytes, **headers: str) -> httpx.Response:
    return client.post("/v1/chat/completions", content=body, headers=JSON | headers)


def with_raw_field(name: str, literal: bytes) -> bytes:
    """BASE as JSON with one more field whose value is written verbatim."""
    return json.dumps(BASE).encode()[:-1] + b', "' + name.encode() + b'": ' + literal + b"}"


# ---------------------------------------------------------------- size and shape


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    body = json.dumps(BASE | {"user": "x" * (4 * MIB)}).encode()
    expect(raw(client, body), 413, code="request_too_large", param=None)


def test_chunked_body_over_the_limit_is_413(client: httpx.Client) -> None:
    """No Content-Length: the server counts while reading and stops at the limit."""

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "smollm2-135m", "user": "'
        for _ in range(5 * 16):
            yield b"x" * (MIB // 16)
        yield b'"}'

    expect(raw(client, chunks()), 413, code="request_too_large")  # type: ignore[arg-type]


def test_body_just_under_the_limit_is_read_and_judged(client: httpx.Client) -> None:
    """3.9 MiB of prompt is within the body limit; it is refused for the context instead."""
    r = chat(client, messages=[{"role": "user", "content": "hello " * (650 * 1024)}])
    expect(r, 400, code="context_length_exceeded", param="messages")


def test_oversized_headers_are_431(client: httpx.Client) -> None:
    r = client.get("/health", headers={"x-filler": "a" * (100 * 1024)})
    expect(r, 431, code="headers_too_large")
    many = {f"x-h{i}": "b" * 100 for i in range(1000)}
    expect(client.get("/v1/models", headers=many), 431, code="headers_too_large")


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deeply_nested_json_is_400(client: httpx.Client, depth: int) -> None:
    body = with_raw_field("metadata", b"[" * depth + b"]" * depth)
    expect(raw(client, body), 400, code="json_too_deep", param=None)


def test_nesting_within_the_limit_is_fine(client: httpx.Client) -> None:
    body = with_raw_field("metadata", b"[" * 60 + b"]" * 60)  # metadata: accepted, ignored
    assert raw(client, body).status_code == 200


def test_deeply_nested_tool_call_arguments_are_400(client: httpx.Client) -> None:
    """Arguments are a string of JSON: the body limit cannot see their depth."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[" * 10**5}}
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    error = expect(chat(client, messages=messages), 400, param="messages[1]")
    assert "nest deeper" in error["message"]


def test_invalid_utf8_is_400(client: httpx.Client) -> None:
    body = json.dumps(BASE).encode().replace(b"hi", b"h\xff\xfei")
    expect(raw(client, body), 400, param=None)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_400(client: httpx.Client, literal: bytes) -> None:
    expect(raw(client, with_raw_field("temperature", literal)), 400, code="invalid_json")


@pytest.mark.parametrize("value", [2**63, 2**64 + 1, -(2**63) - 1, 10**40])
def test_seed_beyond_64_bits_is_400(client: httpx.Client, value: int) -> None:
    expect(chat(client, seed=value), 400, param="seed")


def test_integer_of_5000_digits_is_400(client: httpx.Client) -> None:
    """Python refuses to parse integers over 4,300 digits: a 400, never a 500."""
    expect(raw(client, with_raw_field("seed", b"9" * 5000)), 400, param=None)


# ---------------------------------------------------------------- sampling parameters


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 10**6}, "n"),
        ({"n": 9}, "n"),
        ({"logprobs": True, "top_logprobs": 10**6}, "top_logprobs"),
        ({"stop": [f"s{i}" for i in range(1000)]}, "stop"),
        ({"stop": "x" * 100_000}, "stop"),
        ({"stop": ["ok", "y" * 257]}, "stop"),
        ({"top_k": 10**25}, "top_k"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        ({"min_tokens": 10**9, "max_tokens": None}, "min_tokens"),
        ({"logit_bias": {"49152": 5}}, "logit_bias"),
        ({"logit_bias": {"2147483647": 5}}, "logit_bias"),
        ({"logit_bias": {"١٢": 5}}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(300)} | {"-1": 1}}, "logit_bias"),
    ],
    ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else v,
)
def test_out_of_range_sampling_is_400(
    client: httpx.Client, fields: dict[str, Any], param: str
) -> None:
    expect(chat(client, **fields), 400, param=param)


def test_the_largest_allowed_values_are_served(client: httpx.Client) -> None:
    r = chat(client, n=8, logprobs=True, top_logprobs=20, stop=["z" * 256] * 4)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["choices"]) == 8
    assert all(len(c["logprobs"]["content"][0]["top_logprobs"]) == 20 for c in body["choices"])


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_beyond_the_context_is_400(client: httpx.Client, name: str) -> None:
    fields = {"max_tokens": None, name: 8192}
    expect(chat(client, **fields), 400, code="context_length_exceeded", param=name)


# ---------------------------------------------------------------- conversations


@pytest.mark.parametrize("content", ["", "   \n\t ", []])
def test_empty_and_blank_user_content_is_served(client: httpx.Client, content: Any) -> None:
    """A documented choice: OpenAI accepts empty content, so do we (README "Limits")."""
    r = chat(client, messages=[{"role": "user", "content": content}])
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user", "content": None}], "messages[0]"),
        ([{"role": "user"}], "messages[0]"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"role": "function", "content": "x", "name": "f"}], "messages[0].role"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "messages"),
        ([{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}], "messages"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], None),
        ([], "messages"),
        ("hello", "messages"),
    ],
    ids=["null content", "no content", "unknown role", "function role", "ends with assistant",
         "system then assistant", "image part", "no messages", "messages a string"],
)  # fmt: skip
def test_malformed_conversations_are_400(
    client: httpx.Client, messages: Any, param: str | None
) -> None:
    error = expect(chat(client, messages=messages), 400)
    if param is not None:
        assert error["param"] == param, error
    else:
        assert error["param"].startswith("messages[0].content"), error


def test_fifty_thousand_messages_are_refused_in_bounded_time(
    client: httpx.Client, smol_server: ServerProcess
) -> None:
    r = chat(client, messages=[{"role": "user", "content": "hi"}] * 50_000)
    expect(r, 400, code="array_above_max_length", param="messages")
    assert smol_server.seconds(r.headers["x-request-id"]) < 30


# ---------------------------------------------------------------- tools and schemas


def _tool(parameters: dict[str, Any], name: str = "f") -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


GIANT = {
    "type": "object",
    "properties": {f"p{i}": {"type": "string", "description": "d" * 50} for i in range(3000)},
}
SELF_REF = {"$ref": "#"}
LOOP = {
    "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
    "type": "object",
    "properties": {"x": {"$ref": "#/$defs/a"}},
    "required": ["x"],
}
RECURSIVE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {"value": {"type": "integer"}, "next": {"$ref": "#/$defs/node"}},
            "required": ["value"],
        }
    },
    "$ref": "#/$defs/node",
}
CATASTROPHIC = {
    "type": "object",
    "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}},
    "required": ["s"],
}


def test_giant_tool_schema_is_refused_by_the_schema_limit(client: httpx.Client) -> None:
    """3000 properties (~280 KB): within the body limit, beyond the schema limit (64 KiB)."""
    error = expect(chat(client, tools=[_tool(GIANT)]), 400, code="invalid_schema", param="tools")
    assert "65536" in error["message"]


def test_two_thousand_tools_are_refused_by_the_schema_limit(client: httpx.Client) -> None:
    tools = [_tool({"type": "object"}, name=f"tool_{i}") for i in range(2000)]
    expect(chat(client, tools=tools), 400, code="array_above_max_length", param="tools")
    # Few enough tools, each small, together over the 64 KiB bound of the tool-call schema.
    fields = {f"p{j}": {"type": "string", "description": "d" * 40} for j in range(12)}
    tools = [_tool({"type": "object", "properties": fields}, f"tool_{i}") for i in range(MAX_TOOLS)]
    expect(chat(client, tools=tools), 400, code="invalid_schema", param="tools")


def _required_kept(r: httpx.Response) -> None:
    """tool_choice "required": a refusal of the schema, a call cut off by max_tokens (a 400
    failed_generation naming tools, never a 200), or calls."""
    if r.status_code == 400 and r.json()["error"]["code"] == "json_validate_failed":
        expect(r, 400, code="json_validate_failed", param="tools")
        assert r.json()["error"]["failed_generation"]
        return
    if r.status_code == 400:
        expect(r, 400, code="invalid_schema")
        return
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        assert choice["message"].get("tool_calls") and choice["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("schema", [SELF_REF, LOOP], ids=["$ref to itself", "$ref loop a->b->a"])
@pytest.mark.parametrize("choice", ["auto", "required"])
def test_ref_loops_in_tools_are_invalid_schema(
    client: httpx.Client, schema: dict[str, Any], choice: str
) -> None:
    """A schema whose $refs never reach a type describes nothing: refused, whatever the
    tool_choice (every tool's schema is checked whenever tools are sent)."""
    r = chat(client, tools=[_tool(schema)], tool_choice=choice, max_tokens=16, temperature=0)
    error = expect(r, 400, code="invalid_schema", param="tools")
    assert "$ref loop" in error["message"]


def test_ref_loop_in_response_format_is_invalid_schema(client: httpx.Client) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": SELF_REF}}
    expect(chat(client, response_format=fmt), 400, code="invalid_schema", param="response_format")


def test_recursive_schema_gets_a_bounded_answer(
    client: httpx.Client, smol_server: ServerProcess
) -> None:
    r = chat(client, tools=[_tool(RECURSIVE)], tool_choice="required", max_tokens=32)
    assert smol_server.seconds(r.headers["x-request-id"]) < 60
    _required_kept(r)


@pytest.mark.parametrize("where", ["tool", "response_format"])
def test_catastrophic_regex_pattern_is_bounded(
    client: httpx.Client, smol_server: ServerProcess, where: str
) -> None:
    """``(a+)+$`` backtracks exponentially in Python's re; the answer comes in time, valid."""
    if where == "tool":
        r = chat(client, tools=[_tool(CATASTROPHIC)], tool_choice="required", max_tokens=40)
        _required_kept(r)
        calls = r.json()["choices"][0]["message"].get("tool_calls") or []
        outputs = [json.loads(c["function"]["arguments"]) for c in calls]
    else:
        fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": CATASTROPHIC}}
        r = chat(client, response_format=fmt, max_tokens=40)
        assert r.status_code in (200, 400), r.text
        if r.status_code == 400:  # cut off by max_tokens: Cerebras's failed_generation
            expect(r, 400, code="json_validate_failed", param="response_format")
        outputs = [json.loads(c["message"]["content"]) for c in r.json().get("choices", [])]
    assert smol_server.seconds(r.headers["x-request-id"]) < 60
    for output in outputs:
        assert re.fullmatch("(a+)+", output["s"]), output


@pytest.mark.parametrize("name", ["<|im_end|>", "x" * 65, "", "a b", "naïve", "get_weather\n"])
def test_bad_tool_names_are_400(client: httpx.Client, name: str) -> None:
    r = chat(client, tools=[_tool({"type": "object"}, name=name)])
    expect(r, 400, param="tools[0].function.name")


# ---------------------------------------------------------------- routing and media types


def test_unknown_model_is_404(client: httpx.Client) -> None:
    error = expect(chat(client, model="gpt-5"), 404, code="model_not_found", param="model")
    assert MODEL in error["message"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b"hello"),
        ("application/x-www-form-urlencoded", b"model=smollm2-135m&messages=hi"),
        ("multipart/form-data; boundary=x", b"--x\r\n\r\nhi\r\n--x--\r\n"),
        ("application/xml", b"<chat/>"),
    ],
)
def test_wrong_content_types_are_400(client: httpx.Client, content_type: str, body: bytes) -> None:
    expect(raw(client, body, **{"content-type": content_type}), 400, param=None)


def test_json_with_a_text_content_type_is_still_refused(client: httpx.Client) -> None:
    """FastAPI parses JSON only for JSON content types; text/plain JSON is not a request."""
    r = raw(client, json.dumps(BASE).encode(), **{"content-type": "text/plain"})
    expect(r, 400, param=None)


@pytest.mark.parametrize("body", [b"", b"null", b"[]", b'"text"', b"42", b"{"])
def test_non_object_bodies_are_400(client: httpx.Client, body: bytes) -> None:
    expect(raw(client, body), 400)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/chat/completions"),
        ("PUT", "/v1/chat/completions"),
        ("DELETE", "/v1/chat/completions"),
        ("PATCH", "/v1/chat/completions"),
        ("POST", "/v1/models"),
        ("DELETE", "/v1/models/smollm2-135m"),
        ("POST", "/health"),
    ],
)
def test_wrong_methods_are_405(client: httpx.Client, method: str, path: str) -> None:
    r = client.request(method, path, json=BASE)
    expect(r, 405)
    assert r.headers.get("allow"), r.headers


def test_unknown_path_is_404(client: httpx.Client) -> None:
    expect(client.get("/v1/completions/../../etc/passwd"), 404, code="not_found")
    expect(client.post("/v2/chat/completions", json=BASE), 404, code="not_found")
