"""Tool calling end to end on llama3.1-tiny (the Llama 3.1 path through the real engine), on
the default backend (llguidance) and on Outlines, and ``auto`` on smollm2-135m too (a model
whose free text ends by itself).

The tiny model's weights are random, so what it says freely is noise: ``required`` and named
choices must still yield calls that validate, because they are constrained by the grammar.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import cerebras.cloud.sdk
import jsonschema
import openai
import pytest
from cerebras.cloud.sdk import Cerebras

from tests.conftest import STRUCTURED_BACKENDS, backend_url
from tests.support.closing import Closing
from tests.support.serverproc import model_dir

pytestmark = pytest.mark.e2e

MODEL = "llama3.1-tiny"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 16}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module", params=STRUCTURED_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def tiny_url(request: pytest.FixtureRequest, backend: str) -> str:
    return backend_url(request, "tiny", backend)


@pytest.fixture(scope="module")
def client(tiny_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{tiny_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def assert_valid_calls(calls: list, names: set[str]) -> None:
    assert calls, "expected at least one tool call"
    for call in calls:
        assert call.type == "function" and call.id
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_always_yields_valid_call(client: openai.OpenAI, seed: int) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=120,
        temperature=1.0,
        seed=seed,
        # Random weights keep appending calls while the grammar allows more (parallel calls
        # on llguidance): one call fits max_tokens. Several calls: tests/unit/test_grammars.
        parallel_tool_calls=False,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message.tool_calls, {"get_weather", "get_time"})
    assert choice.message.content is None


def test_named_choice_calls_that_tool_and_finishes_with_stop(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        max_tokens=120,
        seed=5,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"  # OpenAI's answer for a named choice
    assert_valid_calls(choice.message.tool_calls, {"get_time"})
    assert len(choice.message.tool_calls) == 1


def test_none_never_calls(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=16, seed=1
    )
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason in ("stop", "length")


def streamed(client: openai.OpenAI, **body: Any) -> tuple[str | None, list[Any], list[str]]:
    """A streamed answer put together: its content (None when empty), its tool-call deltas
    and its finish reasons."""
    chunks = list(client.chat.completions.create(**body, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    content = "".join(d.content or "" for d in deltas) or None
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    return content, calls, [f for f in finishes if f]


AUTO_MAX_TOKENS = 60


def check_auto_answer(client: openai.OpenAI, model: str, question: str, seed: int) -> str:
    """Ask with ``tool_choice`` auto (the default with tools), streamed and not, and check what
    auto promises; returns "call", or the finish reason of free text.

    ``auto`` is constrained to a valid call or free text (grammars/encode.py FREE_TEXT:
    non-empty, first non-space character not ``{``). Free text comes back as content with no
    tool_calls, finishing ``stop`` or, at max_tokens, ``length``; a call as tool_calls, no
    content, finishing ``tool_calls``. Streamed and non-streamed answers agree for the same
    seed."""
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "tools": TOOLS, "max_tokens": AUTO_MAX_TOKENS, "seed": seed}  # fmt: skip
    r = client.chat.completions.create(**body)
    choice, message = r.choices[0], r.choices[0].message
    content, call_deltas, finishes = streamed(client, **body)
    assert finishes == [choice.finish_reason]
    assert content == message.content
    assert [(c.function.name, c.function.arguments) for c in call_deltas] == [
        (c.function.name, c.function.arguments) for c in message.tool_calls or []
    ]
    if message.tool_calls:
        assert_valid_calls(message.tool_calls, {"get_weather", "get_time"})
        assert choice.finish_reason == "tool_calls" and message.content is None
        return "call"
    assert isinstance(message.content, str) and message.content.strip()
    assert not message.content.lstrip().startswith("{"), message.content
    expected = "length" if r.usage.completion_tokens == AUTO_MAX_TOKENS else "stop"
    assert choice.finish_reason == expected, (choice.finish_reason, r.usage)
    return choice.finish_reason


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auto_on_llama_returns_free_text_or_valid_calls(client: openai.OpenAI, seed: int) -> None:
    # The tiny model's weights are random: its free text never stops by itself within the
    # limit (seeds 0 to 7 all ran to it), and it has not opened a call with these seeds.
    assert check_auto_answer(client, MODEL, ASK[0]["content"], seed) in ("call", "length")


def test_auto_on_smollm2_stops_free_text_and_makes_valid_calls(
    smol_url: str, closing: Closing
) -> None:
    """SmolLM2 (the ChatML path) answers auto both ways: free text that ends by itself, and
    calls. The seeds are fixed; what each gave when written is noted."""
    smol = closing(openai.OpenAI(base_url=f"{smol_url}/v1", api_key="unused", max_retries=0))
    cases = [
        ("Say hello in French.", 0),  # text, stop after 24 tokens
        ("Say hello in French.", 1),  # text, stop after 22 tokens
        ("What is the weather in Paris?", 0),  # a get_weather call
        ("What is the weather in Paris?", 3),  # text, stop after 16 tokens
    ]
    seen = [check_auto_answer(smol, "smollm2-135m", question, seed) for question, seed in cases]
    # Both branches ran, free text ending by itself included: otherwise the checks above
    # covered less than they claim.
    assert "call" in seen and "stop" in seen, seen


def test_streamed_required_call_arrives_whole(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            max_tokens=120,
            seed=3,
            stream=True,
            parallel_tool_calls=False,  # as above: one call fits max_tokens
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    call_deltas = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert call_deltas, "no tool call was streamed"
    for tc in call_deltas:
        # Whole in one delta: id, name and complete JSON arguments together.
        assert tc.id and tc.function.name and json.loads(tc.function.arguments) is not None
    assert not "".join(d.content or "" for d in deltas)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    finals = [f for f in finals if f]
    assert finals == ["tool_calls"]


def test_two_turn_conversation_with_tool_result(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=120, seed=9
    )
    call = first.choices[0].message.tool_calls[0]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})},
    ]
    second = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=12
    )
    assert second.choices[0].message.content is not None
    # The history (call and result) is part of the prompt. With tool_choice "none" the tool
    # definitions are left out of the prompt, so compare with the first question alone.
    alone = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=1
    )
    call_text = len(call.function.name) + len(call.function.arguments)
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + call_text // 8


def test_cerebras_sdk_tool_call(tiny_url: str, closing: Closing) -> None:
    client = closing(Cerebras(base_url=tiny_url, api_key="unused", max_retries=0))
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=120, seed=4
    )
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name in SCHEMAS
    jsonschema.validate(json.loads(calls[0].function.arguments), SCHEMAS[calls[0].function.name])


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
        ([WEATHER, WEATHER], "auto", "tools"),
        ([{"type": "function", "function": {"name": "bad name!"}}], "auto", "tools[0].function"),
        (
            [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}],
            "auto",
            "tools",
        ),
        ([{"type": "retrieval"}], "auto", "tools[0].type"),
    ],
)
def test_bad_tools_are_400(client: openai.OpenAI, tools: list, choice: object, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ASK, tools=tools, tool_choice=choice)
    assert err.value.body["param"].startswith(param), err.value.body


BOOK = {
    "type": "function",
    "function": {
        "name": "book",
        "description": "Book a month (Pydantic's Field(ge=1, le=12)).",
        "parameters": {
            "type": "object",
            "properties": {
                "month": {"type": "integer", "minimum": 1, "maximum": 12},
                "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                "nights": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 30},
            },
            "required": ["month", "code", "nights"],
            "additionalProperties": False,
        },
    },
}
CHOICES = {
    "required": "required",
    "named": {"type": "function", "function": {"name": "book"}},
    "auto": "auto",
    "none": "none",
}


def _ask_book(
    client: openai.OpenAI | Cerebras, choice: str, stream: bool, seed: int
) -> tuple[list, str]:
    """The calls (name, arguments) and the content of one answer, through either SDK."""
    kwargs = dict(model=MODEL, messages=ASK, tools=[BOOK, TIME], tool_choice=CHOICES[choice],
                  max_tokens=120, seed=seed, parallel_tool_calls=False)  # fmt: skip
    if not stream:
        message = client.chat.completions.create(**kwargs).choices[0].message  # type: ignore
        return [(c.function.name, c.function.arguments) for c in message.tool_calls or []], (
            message.content or ""
        )
    calls, content = {}, ""
    for chunk in client.chat.completions.create(stream=True, **kwargs):  # type: ignore
        for delta in (c.delta for c in chunk.choices):
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                calls[tc.index] = (tc.function.name, tc.function.arguments)
    return list(calls.values()), content


@pytest.mark.parametrize("sdk", ["openai", "cerebras"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("choice", list(CHOICES))
def test_tool_with_bounds_and_pattern(
    client: openai.OpenAI,
    tiny_url: str,
    backend: str,
    choice: str,
    stream: bool,
    sdk: str,
    closing: Closing,
) -> None:
    """Numeric bounds and patterns (Pydantic's ge/le) work with every tool_choice, through
    both SDKs, on the default backend; Outlines cannot enforce bounds and refuses them naming
    the keyword, except with ``none``, which builds no grammar from the tools."""
    api: openai.OpenAI | Cerebras = client
    bad_request: type[Exception] = openai.BadRequestError
    if sdk == "cerebras":
        api = closing(Cerebras(base_url=tiny_url, api_key="unused", max_retries=0))
        bad_request = cerebras.cloud.sdk.BadRequestError
    if backend == "outlines" and choice != "none":
        with pytest.raises(bad_request) as err:
            _ask_book(api, choice, stream, seed=1)
        body = err.value.body  # type: ignore[attr-defined]
        assert body["param"] == "tools" and "minimum" in body["message"]
        return
    schemas = {**SCHEMAS, "book": BOOK["function"]["parameters"]}
    for seed in (1, 2):
        calls, content = _ask_book(api, choice, stream, seed)
        if choice == "none":
            assert not calls and content
        elif choice != "auto":
            assert len(calls) == 1 and not content  # parallel_tool_calls false: exactly one
        for name, arguments in calls:
            jsonschema.validate(json.loads(arguments), schemas[name])


def test_truncated_forced_call_is_400_with_failed_generation(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=4
        )
    body = err.value.body
    assert body["param"] == "tools" and body["code"] == "json_validate_failed"
    assert body["failed_generation"].startswith("{")


@pytest.fixture(scope="module")
def tiny_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir(MODEL))


@pytest.mark.parametrize("text", ["日本語", "🎉🚀"])
def test_auto_free_text_in_any_script(
    client: openai.OpenAI, backend: str, text: str, tiny_tokenizer: Any
) -> None:
    """Free text on auto may hold characters the tokenizer splits into byte tokens (Japanese,
    emoji): logit_bias pushes the random model to write them, and they come through. On
    Outlines those characters cannot come (README, ``grammars.encode``): its index masks a
    token that ends inside a UTF-8 character, so only whole-token characters are written."""
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    split = {  # the characters Llama 3.1's tokenizer spells with byte tokens
        char
        for char in text
        if any("\ufffd" in tiny_tokenizer.decode([i])
               for i in tiny_tokenizer.encode(char, add_special_tokens=False))
    }  # fmt: skip
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], tools=TOOLS,
        max_tokens=12, temperature=0, logit_bias={str(i): 30 for i in ids},
    )  # fmt: skip
    content = r.choices[0].message.content or ""
    assert not r.choices[0].message.tool_calls
    assert "\ufffd" not in content, content  # whole characters, never a broken byte sequence
    if backend == "outlines":
        assert content.strip(), content
        assert not split.intersection(content), content
        whole = set(text) - split
        assert not whole or whole.intersection(content), content
    elif ord(max(text)) > 0xFFFF:
        # The bias lands on the emoji's shared leading bytes: an emoji, maybe another one.
        assert any(ord(char) > 0xFFFF for char in content), content
    else:
        assert any(char in content for char in text), content
