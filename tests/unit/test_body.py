"""server.http.body: a generating route's body, validated off the event loop when large, with
the errors FastAPI's own validation gave."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, field_validator

from server.app import validation_to_api_error
from server.chat.protocol import MAX_MESSAGES, MAX_TOOLS, ChatCompletionRequest
from server.completions.protocol import CompletionRequest
from server.http.body import parse_body, validate_body
from server.http.request_limits import SCAN_IN_THREAD_BYTES

JSON = "application/json"


class Recorded(BaseModel):
    """Records the thread its validation ran on."""

    ids: list[int]

    @field_validator("ids")
    @classmethod
    def where(cls, ids: list[int]) -> list[int]:
        THREADS.append(threading.get_ident())
        return ids


THREADS: list[int] = []


def _request(body: bytes, content_type: str | None = JSON) -> Request:
    headers = [(b"content-type", content_type.encode())] if content_type else []
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    return Request(scope, receive)


@pytest.mark.parametrize(("count", "on_loop"), [(10, True), (SCAN_IN_THREAD_BYTES, False)])
def test_large_bodies_are_validated_off_the_event_loop(count: int, on_loop: bool) -> None:
    body = json.dumps({"ids": list(range(count))}).encode()
    assert (len(body) <= SCAN_IN_THREAD_BYTES) is on_loop
    THREADS.clear()

    async def run() -> tuple[Recorded, int]:
        return await parse_body(_request(body), Recorded), threading.get_ident()

    parsed, loop_thread = asyncio.run(run())
    assert parsed.ids[-1] == count - 1
    assert ([loop_thread] == THREADS) is on_loop


def test_a_large_invalid_body_fails_in_the_thread_with_the_parameter_named() -> None:
    ids = [[1, 2]] * SCAN_IN_THREAD_BYTES + [[-1]]
    body = json.dumps({"model": "m", "prompt": ids}).encode()
    with pytest.raises(RequestValidationError) as failed:
        asyncio.run(parse_body(_request(body), CompletionRequest))
    error = validation_to_api_error(failed.value.errors())
    assert error.param is not None and error.param.startswith("prompt")


def _error(body: bytes, content_type: str | None = JSON) -> tuple[str | None, str]:
    with pytest.raises(RequestValidationError) as failed:
        validate_body(body, content_type, CompletionRequest)
    error = validation_to_api_error(failed.value.errors())
    return error.param, error.message


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", JSON),
        (b"{", JSON),
        (b"\xff\xfe", JSON),
        (b"[]", JSON),
        (b"null", JSON),
        (b'"text"', JSON),
        (b'{"model": "m", "prompt": "hi"}', "text/plain"),
        (b'{"model": "m", "prompt": "hi"}', None),
    ],
)
def test_what_is_not_a_json_object_names_no_parameter(body: bytes, content_type: str) -> None:
    assert _error(body, content_type) == (None, "The request body is not a valid JSON object.")


def test_json_content_types_with_parameters_and_suffixes_are_json() -> None:
    body = b'{"model": "m", "prompt": "hi"}'
    for content_type in (JSON, "application/json; charset=utf-8", "application/vnd.x+json"):
        assert validate_body(body, content_type, CompletionRequest).prompt == "hi"


def test_field_errors_name_the_field() -> None:
    assert _error(b'{"model": "m"}') == ("prompt", "Missing required parameter: 'prompt'.")
    param, message = _error(b'{"model": "m", "prompt": "hi", "n": "many"}')
    assert param == "n" and message.startswith("Invalid value for 'n'")
    param, message = _error(b'{"model": "m", "prompt": "hi", "colour": 1}')
    assert param == "colour" and "Unrecognized request argument" in message


def test_too_many_messages_tools_or_prompts_are_refused_before_validating_each() -> None:
    message = {"role": "user", "content": "a"}
    body = {"model": "m", "messages": [message] * (MAX_MESSAGES + 1)}
    param, text, code = _chat_error(json.dumps(body).encode())
    assert (param, code) == ("messages", "array_above_max_length")
    assert text == (
        f"Invalid 'messages': array too long. Expected an array with maximum length "
        f"{MAX_MESSAGES}, but got an array with length {MAX_MESSAGES + 1} instead."
    )
    tool = {"type": "function", "function": {"name": "f"}}
    body = {"model": "m", "messages": [message], "tools": [tool] * (MAX_TOOLS + 1)}
    param, text, code = _chat_error(json.dumps(body).encode())
    assert (param, code) == ("tools", "array_above_max_length")
    assert f"maximum length {MAX_TOOLS}, but got an array with length {MAX_TOOLS + 1}" in text
    param, text = _error(json.dumps({"model": "m", "prompt": [[1]] * 100_000, "n": 2}).encode())
    assert param == "prompt" and "100000 prompts with n=2 ask for 200000 choices" in text


def _chat_error(body: bytes) -> tuple[str | None, str, str | None]:
    with pytest.raises(RequestValidationError) as failed:
        validate_body(body, JSON, ChatCompletionRequest)
    error = validation_to_api_error(failed.value.errors())
    return error.param, error.message, error.code
