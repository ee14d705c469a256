"""Parsing model answers into tool calls: fail closed, and agree with the streaming helper."""

from __future__ import annotations

import json

import pytest

from server.chat.protocol import FunctionCall, Tool, ToolCall
from server.models.formats.tool_calls import LLAMA3_JSON, ParsedAnswer

PYTHON_TAG = LLAMA3_JSON.tag
parse_tool_calls = LLAMA3_JSON.parse
format_calls = LLAMA3_JSON.format


def could_be_call_prefix(text: str) -> bool:
    return LLAMA3_JSON.prefix_verdict(text) is not None


WEATHER = Tool(
    type="function",
    function={
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
)
TIME = Tool(type="function", function={"name": "get_time"})
TOOLS = [WEATHER, TIME]


def parse(text: str, parallel: bool = True) -> ParsedAnswer:
    return parse_tool_calls(text, TOOLS, parallel=parallel)


def calls_of(answer: ParsedAnswer) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in answer.calls]


def test_single_call() -> None:
    answer = parse('{"name": "get_weather", "parameters": {"city": "Paris"}}')
    assert answer.content is None
    assert calls_of(answer) == [("get_weather", {"city": "Paris"})]
    (tc,) = answer.calls
    assert tc.type == "function" and tc.id.startswith("call_") and len(tc.id) > 10
    assert isinstance(tc.function.arguments, str)


def test_meta_reference_shape_and_arguments_synonym() -> None:
    meta = '{"type": "function", "name": "get_weather", "parameters": {"city": "Oslo"}}'
    openai = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    as_string = '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}'
    for text in (meta, openai, as_string):
        assert calls_of(parse(text)) == [("get_weather", {"city": "Oslo"})]


def test_tool_without_schema_takes_any_object_or_nothing() -> None:
    assert calls_of(parse('{"name": "get_time"}')) == [("get_time", {})]
    assert calls_of(parse('{"name": "get_time", "parameters": {"tz": "UTC"}}')) == [
        ("get_time", {"tz": "UTC"})
    ]


CALL_A = '{"name": "get_weather", "parameters": {"city": "A"}}'
CALL_T = '{"name": "get_time", "parameters": {}}'


@pytest.mark.parametrize(
    "text",
    [
        f"{CALL_A}; {CALL_T}",
        f"{CALL_A}\n{CALL_T}",
        f"{CALL_A}\n\n;\n{CALL_T}",
        f"{CALL_A}{CALL_T}",
        f"[{CALL_A}, {CALL_T}]",
    ],
)
def test_several_calls(text: str) -> None:
    answer = parse(text)
    assert answer.content is None
    assert calls_of(answer) == [("get_weather", {"city": "A"}), ("get_time", {})]
    assert len({c.id for c in answer.calls}) == 2


def test_parallel_false_is_exactly_one_call() -> None:
    # Several calls where one was promised are not one call: the answer stays content (the
    # grammar allows one call; only free text, e.g. a list after "[", can hold several).
    text = '{"name": "get_time"}; {"name": "get_weather", "parameters": {"city": "B"}}'
    assert parse(text, parallel=False).calls == []
    assert parse(text, parallel=False).content == text
    listed = '[{"name": "get_time"}, {"name": "get_time"}]'
    assert parse(listed, parallel=False).content == listed
    assert len(parse('{"name": "get_time"}', parallel=False).calls) == 1


@pytest.mark.parametrize("prefix", [PYTHON_TAG, f"  {PYTHON_TAG}\n", "\n\n"])
def test_python_tag_and_whitespace_prefix(prefix: str) -> None:
    answer = parse(prefix + '{"name": "get_weather", "parameters": {"city": "Rome"}}  \n')
    assert calls_of(answer) == [("get_weather", {"city": "Rome"})]


def test_unicode_arguments_survive() -> None:
    escaped_flag = "\\ud83c\\udde8\\ud83c\\udded"
    answer = parse(
        f'{{"name": "get_weather", "parameters": {{"city": "Zürich {escaped_flag} 東京"}}}}'
    )
    (tc,) = answer.calls
    assert json.loads(tc.function.arguments) == {"city": "Zürich 🇨🇭 東京"}
    assert "Zürich" in tc.function.arguments  # readable, not \u-escaped


PLAIN = [
    "The weather is nice.",
    "",
    'Sure! {"name": "get_weather", "parameters": {"city": "Paris"}}',  # text plus call
    '{"name": "get_weather", "parameters": {"city": "Paris"}} and some words',
    '{"name": "get_weather", "parameters": {"city": "Paris"}',  # malformed: unclosed
    "{'name': 'get_weather', 'parameters': {'city': 'Paris'}}",  # not JSON
    '{"name": "get_weather", "parameters": "{city: Paris}"}',  # arguments do not parse
    '{"name": "get_weather", "parameters": [1, 2]}',  # arguments not an object
    '{"name": "send_email", "parameters": {"to": "a@b.c"}}',  # unknown tool
    '{"name": ["get_time"]}',
    '{"name": "get_weather", "parameters": {"town": "Paris"}}',  # schema: required missing
    '{"name": "get_weather", "parameters": {"city": 42}}',  # schema: wrong type
    '{"name": "get_weather", "parameters": {"city": "P", "unit": "kelvin"}}',  # schema: enum
    '{"name": "get_weather", "parameters": {"city": "P"}, "extra": 1}',  # not a call shape
    '{"type": "tool", "name": "get_time"}',
    '{"name": "get_time", "parameters": {}, "arguments": {}}',
    '{"name": "get_time"}; {"name": "nope"}',  # one bad call spoils the answer
    "[]",
    '{"name": "get_time", "parameters": {"x": NaN}}',
    '[{"name": "get_time", "parameters": {"x": -Infinity}}]',
    '["get_time"]',
    '{"city": "Paris"}',
    "[1] A footnote.",
    PYTHON_TAG + "print('hi')",
]


@pytest.mark.parametrize("text", PLAIN)
def test_fails_closed_to_plain_content(text: str) -> None:
    answer = parse(text)
    assert answer.calls == []
    assert answer.content == text


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "no-such-type"},
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "(["}}},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
        {"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}},
    ],
)
def test_unusable_schema_fails_closed(schema: dict) -> None:
    broken = Tool(type="function", function={"name": "f", "parameters": schema})
    answer = parse_tool_calls('{"name": "f", "parameters": {"a": "x"}}', [broken], parallel=True)
    assert answer.calls == []


def test_no_tools_means_no_calls() -> None:
    assert parse_tool_calls('{"name": "get_time"}', [], parallel=True).calls == []


# ---------------------------------------------------------------- streaming helper


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "{",
        ' {"',
        '{"na',
        '{ "name"',
        "[",
        "[ {",
        '[{"parameters',
        "<|py",
        PYTHON_TAG,
        PYTHON_TAG + ' {"type',
        '{"name": "get_weather", "parame',
    ],
)
def test_could_be_call_prefix_holds(text: str) -> None:
    assert could_be_call_prefix(text)


@pytest.mark.parametrize(
    "text",
    ["Hello", " The", "{x", '{"answer', '{"city":', "[1]", '["a"', "<p>", PYTHON_TAG + "print"],
)
def test_could_be_call_prefix_releases(text: str) -> None:
    assert not could_be_call_prefix(text)


ACCEPTED = [
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    f'  {PYTHON_TAG}{{"type": "function", "name": "get_time", "parameters": {{}}}}',
    '[ {"arguments": {"city": "X"}, "name": "get_weather"} ]',
    '{"name": "get_time"}; {"name": "get_weather", "parameters": {"city": "B"}}',
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_every_prefix_of_a_call_is_held(text: str) -> None:
    """The streamer must never release text that the final parse turns into a call."""
    assert parse(text).calls
    assert all(could_be_call_prefix(text[:i]) for i in range(len(text) + 1))


@pytest.mark.parametrize("text", ACCEPTED)
def test_a_settled_prefix_stays_settled(text: str) -> None:
    """Once the first key is whole, every longer prefix still may be a call: the streamer
    stops looking (a long call is not rescanned at every token)."""
    verdicts = [LLAMA3_JSON.prefix_verdict(text[:i]) for i in range(len(text) + 1)]
    first = verdicts.index(True)
    assert all(v is True for v in verdicts[first:])
    assert all(v is False for v in verdicts[:first])
    assert LLAMA3_JSON.prefix_verdict(text[:first] + " anything at all") is True


@pytest.mark.parametrize(
    ("text", "verdict"),
    [("", False), ('{"na', False), ('{"name"', True), ('{"answer', None), ("Hello", None)],
)
def test_prefix_verdict(text: str, verdict: bool | None) -> None:
    assert LLAMA3_JSON.prefix_verdict(text) is verdict


# ---------------------------------------------------------------- rendering history


def test_format_calls_is_metas_json_and_parses_back() -> None:
    calls = [
        ToolCall(id="c1", function=FunctionCall(name="get_weather", arguments='{"city": "Köln"}')),
        ToolCall(id="c2", function=FunctionCall(name="get_time", arguments="{}")),
    ]
    text = format_calls(calls)
    assert text == (
        '{"type": "function", "name": "get_weather", "parameters": {"city": "K\\u00f6ln"}}'
        '{"type": "function", "name": "get_time", "parameters": {}}'
    )
    back = parse(text)
    assert [(c.function.name, json.loads(c.function.arguments)) for c in back.calls] == [
        ("get_weather", {"city": "Köln"}),
        ("get_time", {}),
    ]


def test_format_calls_keeps_unparsable_arguments_as_text() -> None:
    call = ToolCall(id="c", function=FunctionCall(name="get_time", arguments="not json"))
    expected = '{"type": "function", "name": "get_time", "parameters": "not json"}'
    assert format_calls([call]) == expected
