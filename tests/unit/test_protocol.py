"""Request validation: shapes, ranges, defaults; and the 400 envelope naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from server.app import validation_to_api_error
from server.chat.protocol import ChatCompletionRequest

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def error_for(**fields: Any) -> dict[str, Any]:
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest(**(BASE | fields))
    errors = [e | {"loc": ("body", *e["loc"])} for e in err.value.errors()]
    return validation_to_api_error(errors).body()["error"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 1.6}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.1}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"stop": ["1", "2", "3", "4", "5"]}, "stop"),
        ({"stop": "x" * 257}, "stop"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"1": -101}}, "logit_bias.1"),
        ({"messages": []}, "messages"),
        ({"user": "u" * 257}, "user"),
        ({"prompt_cache_key": "k" * 1025}, "prompt_cache_key"),
        ({"service_tier": "fast"}, "service_tier"),
        ({"service_tier": "Priority"}, "service_tier"),
        ({"repetition_penalty": 5e-324}, "repetition_penalty"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": "x",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{}"},
                            }
                        ],
                    }
                ]
            },
            "messages[0]",
        ),
        ({"seed": 2**64}, "seed"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_bad_fields_name_the_parameter(fields: dict[str, Any], param: str) -> None:
    error = error_for(**fields)
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


def test_unknown_field_message() -> None:
    assert error_for(bogus=1)["message"] == "Unrecognized request argument supplied: bogus"


def test_ignored_openai_fields_are_dropped() -> None:
    request = ChatCompletionRequest(**BASE, store=True, metadata={"a": 1})
    assert "store" not in request.model_dump()


@pytest.mark.parametrize(
    ("tier", "used"),
    [
        (None, "default"),
        ("auto", "default"),
        ("default", "default"),
        ("flex", "flex"),
        ("priority", "priority"),
    ],
)
def test_service_tier_runs_auto_as_default(tier: str | None, used: str) -> None:
    assert ChatCompletionRequest(**BASE, service_tier=tier).tier_used == used


def test_usage_counts_uncached_tokens_as_cerebras_does() -> None:
    """Uncached: prompt tokens not served from the cache, plus the completion."""
    from server.common.protocol import PromptTokensDetails, Usage

    usage = Usage(
        prompt_tokens=1000,
        completion_tokens=20,
        total_tokens=1020,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=960),
    )
    assert usage.uncached_tokens == 60
    assert usage.model_dump()["prompt_tokens_details"] == {"cached_tokens": 960}
    assert Usage(prompt_tokens=5, completion_tokens=1, total_tokens=6).uncached_tokens == 6


def test_content_parts_join_as_text() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": parts}])
    assert request.messages[0].text == "ab"


def test_tool_choice_defaults_follow_openai() -> None:
    assert ChatCompletionRequest(**BASE).effective_tool_choice == "none"
    tool = {"type": "function", "function": {"name": "f"}}
    assert ChatCompletionRequest(**BASE, tools=[tool]).effective_tool_choice == "auto"


def test_max_completion_tokens_wins() -> None:
    request = ChatCompletionRequest(**BASE, max_tokens=5, max_completion_tokens=9)
    assert request.completion_limit == 9


@pytest.mark.parametrize("name", sorted(ChatCompletionRequest.model_fields))
@pytest.mark.parametrize("bad", [{"x": [1]}, "yes please", 3.5, [1]], ids=repr)
def test_every_wrong_type_names_its_field(name: str, bad: Any) -> None:
    """Whatever the field's type, a wrong value's error names the field (``stream`` once lost
    its name: it starts like pydantic's ``str`` branch tag)."""
    try:
        ChatCompletionRequest(**(BASE | {name: bad}))
    except ValidationError as exc:
        errors = [e | {"loc": ("body", *e["loc"])} for e in exc.errors()]
        param = validation_to_api_error(errors).param or ""
        assert param.split(".")[0].split("[")[0] == name, (param, exc.errors()[0]["loc"])
    else:
        assert bad == "yes please" and name in {"model", "prompt_cache_key", "stop", "user"}


def test_wire_shape_follows_openai_schema() -> None:
    """OpenAI's schema allows only an array for message.tool_calls (it omits the field) and
    requires finish_reason, null until the last chunk, on every chunk's choice."""
    from server.chat.protocol import ChatCompletionChunk, ChunkChoice, Delta, ResponseMessage

    assert "tool_calls" not in ResponseMessage(content="hi").model_dump()
    assert ResponseMessage(content="hi").model_dump()["refusal"] is None  # nullable, required
    chunk = ChatCompletionChunk(
        id="c", created=0, model="m", system_fingerprint="f",
        choices=[ChunkChoice(index=0, delta=Delta(content="a"))],
    )  # fmt: skip
    choice = json.loads(chunk.model_dump_json())["choices"][0]
    assert choice["finish_reason"] is None and choice["delta"] == {"content": "a"}
    assert "usage" not in json.loads(chunk.model_dump_json())
