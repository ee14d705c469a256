"""The frameworks applications reach us through: LangChain's ChatOpenAI and LiteLLM (as an
OpenAI-compatible endpoint and as its Cerebras provider), pointed at the real server with
nothing but a base URL. Free text on smollm2-135m; tool calls on llama3.1-tiny, where the
grammar guarantees them whatever the random weights say."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

# LiteLLM fetches its model price list from the internet at import unless told otherwise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from tests.e2e.test_tools import WEATHER

pytestmark = pytest.mark.e2e

SMOL, TINY = "smollm2-135m", "llama3.1-tiny"
ASK_WEATHER = "What is the weather in Paris?"


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: Literal[18, 30, 45, 60]


class BookTable(BaseModel):
    """Book a table: bounds and a pattern, as Pydantic writes them into the tool's schema."""

    month: int = Field(ge=1, le=12)
    code: str = Field(pattern=r"^[A-Z]{3}-[0-9]{2}$")
    nights: int = Field(gt=0, lt=30)


def chat_model(url: str, model: str, **kwargs: object) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=f"{url}/v1", api_key="unused", max_retries=0, **kwargs)


# ------------------------------------------------------------------ LangChain


def test_langchain_invoke_reports_usage_and_finish_reason(smol_url: str) -> None:
    message = chat_model(smol_url, SMOL, max_tokens=8, temperature=0).invoke("Say hello.")
    assert isinstance(message, AIMessage) and message.content
    usage = message.usage_metadata
    assert usage is not None and usage["output_tokens"] <= 8
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert message.response_metadata["finish_reason"] in ("stop", "length")
    assert message.response_metadata["model_name"] == SMOL


def test_langchain_stream_adds_up_to_the_same_answer(smol_url: str) -> None:
    model = chat_model(smol_url, SMOL, max_tokens=12, temperature=0, stream_usage=True)
    chunks = list(model.stream("Count to five."))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert len(chunks) > 2 and whole.content == model.invoke("Count to five.").content
    assert whole.usage_metadata is not None and whole.usage_metadata["output_tokens"] == 12


def test_langchain_tool_calls_and_the_tool_result_turn(tiny_url: str) -> None:
    model = chat_model(tiny_url, TINY, max_tokens=64, temperature=0)
    asked = HumanMessage(ASK_WEATHER)
    # One call: with parallel calls allowed, random weights append calls until max_tokens.
    bound = model.bind_tools([WEATHER], tool_choice="required", parallel_tool_calls=False)
    call = bound.invoke([asked])
    assert call.tool_calls, call
    first = call.tool_calls[0]
    assert first["name"] == "get_weather" and first["id"]
    jsonschema.validate(first["args"], WEATHER["function"]["parameters"])
    # LangChain sends the call back as an assistant turn, then the result as a tool turn.
    result = ToolMessage(content='{"temperature_c": 21}', tool_call_id=first["id"])
    answer = model.bind_tools([WEATHER]).invoke([asked, call, result])
    assert isinstance(answer, AIMessage) and (answer.content or answer.tool_calls)


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
@pytest.mark.parametrize("choice", ["required", "BookTable", "auto", "none"])
def test_langchain_bind_tools_with_bounds_and_pattern(
    tiny_url: str, choice: str, stream: bool
) -> None:
    """A Pydantic tool with ``Field(ge=..., le=...)``, ``gt``/``lt`` and a ``pattern`` through
    ``bind_tools``, with every tool_choice (a name is LangChain's named choice)."""
    model = chat_model(tiny_url, TINY, max_tokens=120, temperature=0, seed=1)
    bound = model.bind_tools([BookTable], tool_choice=choice, parallel_tool_calls=False)
    if stream:
        chunks = list(bound.stream(ASK_WEATHER))
        message = chunks[0]
        for chunk in chunks[1:]:
            message += chunk
    else:
        message = bound.invoke(ASK_WEATHER)
    assert isinstance(message, AIMessage) and not message.invalid_tool_calls, message
    if choice == "none":
        assert not message.tool_calls and message.content
    elif choice != "auto":
        assert len(message.tool_calls) == 1 and not message.content, message
    for call in message.tool_calls:
        assert call["name"] == "BookTable"
        BookTable.model_validate(call["args"])  # raises unless within the bounds and pattern


def test_langchain_structured_output_is_a_validated_object(smol_url: str) -> None:
    model = chat_model(smol_url, SMOL, max_tokens=120, temperature=0)
    person = model.with_structured_output(Person, method="json_schema").invoke("Invent a person.")
    assert isinstance(person, Person)


def test_langchain_surfaces_our_400(smol_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat_model(smol_url, SMOL, temperature=5).invoke("hi")
    assert caught.value.body["param"] == "temperature"


# -------------------------------------------------------------------- LiteLLM


def test_litellm_completion_and_stream(smol_url: str) -> None:
    common = {"api_base": f"{smol_url}/v1", "api_key": "unused", "max_tokens": 10}
    ask = [{"role": "user", "content": "Say hello."}]
    response = litellm.completion(model=f"openai/{SMOL}", messages=ask, temperature=0, **common)
    text = response.choices[0].message.content
    assert text and response.usage.completion_tokens <= 10
    streamed = litellm.completion(
        model=f"openai/{SMOL}", messages=ask, temperature=0, stream=True, **common
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text


def test_litellm_async_and_its_cerebras_provider(smol_url: str) -> None:
    async def ask(model: str) -> str:
        response = await litellm.acompletion(
            model=model,
            api_base=f"{smol_url}/v1",
            api_key="unused",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=6,
            temperature=0,
        )
        return response.choices[0].message.content

    async def both() -> list[str]:
        return list(await asyncio.gather(ask(f"openai/{SMOL}"), ask(f"cerebras/{SMOL}")))

    as_openai, as_cerebras = asyncio.run(both())
    assert as_openai and as_openai == as_cerebras


def test_litellm_tool_calls(tiny_url: str) -> None:
    response = litellm.completion(
        model=f"openai/{TINY}",
        api_base=f"{tiny_url}/v1",
        api_key="unused",
        messages=[{"role": "user", "content": ASK_WEATHER}],
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,  # random weights would append calls until max_tokens
        max_tokens=64,
        temperature=0,
    )
    calls = response.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])
    assert response.choices[0].finish_reason == "tool_calls"


def test_litellm_maps_our_errors_to_its_exceptions(smol_url: str) -> None:
    common = {"api_base": f"{smol_url}/v1", "api_key": "unused", "max_retries": 0}
    ask = [{"role": "user", "content": "hi"}]
    with pytest.raises(litellm.BadRequestError, match="temperature"):
        litellm.completion(model=f"openai/{SMOL}", messages=ask, temperature=5, **common)
    with pytest.raises(litellm.NotFoundError, match="does not exist"):
        litellm.completion(model="openai/no-such-model", messages=ask, **common)
