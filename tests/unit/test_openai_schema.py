"""The OpenAPI checker (tests/support/openai_schema.py) on its own: it rejects the shapes
OpenAI's document forbids, reads 3.0's ``nullable``, and names the path of a mismatch; and
the protocol models and every error class render bodies that conform (the e2e test sends
real ones: tests/e2e/test_openapi_conformance.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from server import errors
from server.chat.protocol import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    Delta,
    FunctionCall,
    ModelCard,
    ModelList,
    ResponseMessage,
    ToolCall,
    Usage,
)
from tests.support.openai_schema import assert_conforms, mismatches

ANSWER = "CreateChatCompletionResponse"
CHUNK = "CreateChatCompletionStreamResponse"
ENVELOPE = {"id": "chatcmpl-1", "created": 1, "model": "m", "system_fingerprint": "fp"}
USAGE = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)


def answer(message: ResponseMessage, finish: Any = "stop") -> dict[str, Any]:
    choice = Choice(index=0, message=message, finish_reason=finish)
    return ChatCompletionResponse(**ENVELOPE, choices=[choice], usage=USAGE).model_dump()


def chunk(delta: Delta, finish: Any = None, **extra: Any) -> dict[str, Any]:
    choices = [ChunkChoice(index=0, delta=delta, finish_reason=finish)]
    return ChatCompletionChunk(**ENVELOPE, choices=choices, **extra).model_dump()


def test_our_answers_and_chunks_conform() -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="f", arguments="{}"))
    assert_conforms(answer(ResponseMessage(content="hi")), ANSWER)
    assert_conforms(answer(ResponseMessage(tool_calls=[call]), "tool_calls"), ANSWER)
    assert_conforms(chunk(Delta(role="assistant", content="")), CHUNK)
    assert_conforms(chunk(Delta(content="a")), CHUNK)
    assert_conforms(chunk(Delta(), "stop", usage=USAGE), CHUNK)
    usage_only = ChatCompletionChunk(**ENVELOPE, choices=[], usage=USAGE).model_dump()
    assert_conforms(usage_only, CHUNK)


def test_models_conform() -> None:
    card = ModelCard(id="m", created=1, owned_by="llama-serve")
    assert_conforms(card.model_dump(), "Model")
    assert_conforms(ModelList(data=[card]).model_dump(), "ListModelsResponse")


def _error_classes() -> list[type[errors.APIError]]:
    found, todo = [], [errors.APIError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_body_conforms(cls: type[errors.APIError]) -> None:
    if cls is errors.FailedGenerationError:
        error = cls("no JSON", failed_generation="{", param="response_format")
    else:
        error = cls("something went wrong", param="temperature")
    body = error.body()
    assert_conforms(body, "ErrorResponse")
    assert body["status_code"] == cls.status  # what the Cerebras SDK picks its class by


def test_the_shapes_the_document_forbids_are_named_by_path() -> None:
    """What issue 14 found before the wire was fixed: message.tool_calls null, and chunks
    without finish_reason."""
    body = answer(ResponseMessage(content="hi"))
    body["choices"][0]["message"]["tool_calls"] = None
    (problem,) = mismatches(body, ANSWER)
    assert problem.startswith("$.choices[0].message.tool_calls: None is not of type 'array'")
    bare = chunk(Delta(content="a"))
    del bare["choices"][0]["finish_reason"]
    (problem,) = mismatches(bare, CHUNK)
    assert problem.startswith("$.choices[0]: 'finish_reason' is a required property")
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]"):
        assert_conforms(bare, CHUNK)


def test_nullable_of_openapi_3_0_is_read() -> None:
    """The document marks some fields ``nullable: true`` (3.0), which JSON Schema ignores:
    a chunk's ``usage`` and ``logprobs`` may be null, but not of another type."""
    body = chunk(Delta(content="a"))
    body["usage"] = None
    body["choices"][0]["logprobs"] = None
    assert mismatches(body, CHUNK) == []
    wrong = copy.deepcopy(body)
    wrong["usage"] = "none"
    assert mismatches(wrong, CHUNK)


def test_error_needs_every_field_openai_requires() -> None:
    body = errors.BadRequestError("bad").body()
    del body["error"]["param"]
    (problem,) = mismatches(body, "ErrorResponse")
    assert problem.startswith("$.error: 'param' is a required property")


def test_an_unknown_schema_name_is_an_error() -> None:
    with pytest.raises(KeyError, match="NoSuchSchema"):
        mismatches({}, "NoSuchSchema")


def test_completion_chunks_may_leave_finish_reason_null_until_the_last() -> None:
    choice = {"index": 0, "text": "Hi", "logprobs": None, "finish_reason": None}
    chunk = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
    chunk["choices"] = [choice]
    assert mismatches(chunk, "CreateCompletionStreamResponse") == []
    problems = mismatches(chunk, "CreateCompletionResponse")  # the document's answer object
    assert problems and all(p.startswith("$.choices[0].finish_reason: None") for p in problems)
    choice["finish_reason"] = "done"
    assert mismatches(chunk, "CreateCompletionStreamResponse")
