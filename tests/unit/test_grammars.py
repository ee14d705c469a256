"""Grammar building: request to constraint, what each backend's grammar accepts, compile checks.

No model and no engine: acceptance is checked on the grammars themselves (Python ``re`` on the
Outlines regex, XGrammar's string matcher, llguidance's matcher over SmolLM2's token ids), and
every string a call grammar accepts is also checked against the call's JSON Schema with
``jsonschema``. The compile checks start real worker processes over SmolLM2's vocabulary.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from typing import Any

import pytest
from vllm.sampling_params import StructuredOutputsParams

from grammars import (
    BACKENDS,
    CompileResult,
    Constraint,
    GrammarCompiler,
    RequestError,
    SchemaError,
    Shape,
    UnsupportedError,
    build_constraint,
    schema_validator,
)
from grammars.encode import _llg_formats, _unenforced, outlines_regex
from grammars.schema_checks import schema_nodes, subschemas
from grammars.shape import closed
from server.chat.protocol import ChatCompletionRequest
from server.models.formats.tool_calls import LLAMA3_JSON
from tests.support.loop_ticks import loop_ticks

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "noargs"}},
]
PATHOLOGICAL = {"type": "string", "pattern": "[ab]*a[ab]{20}"}
"""A DFA needs 2**20 states for it: Outlines cannot build its index in bounded time."""


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], **fields)


def constrain(request: ChatCompletionRequest, *, backend: str) -> Constraint | None:
    return build_constraint(request, backend=backend, syntax=LLAMA3_JSON)


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


# ---------------------------------------------------------------- building constraints


def test_plain_text_needs_no_constraint() -> None:
    assert constrain(request(), backend="outlines") is None
    assert constrain(request(response_format={"type": "text"}), backend="outlines") is None
    assert constrain(request(tools=TOOLS, tool_choice="none"), backend="xgrammar") is None


def test_json_object() -> None:
    c = constrain(request(response_format={"type": "json_object"}), backend="xgrammar")
    assert c is not None
    assert (c.kind, c.param, c.schema, c.call_schema) == (
        "json_object",
        "response_format",
        {"type": "object"},
        None,
    )
    assert c.structured_outputs.json_object is True
    # Outlines' regex is built in the worker, never in the server process.
    c = constrain(request(response_format={"type": "json_object"}), backend="outlines")
    assert c is not None and c.structured_outputs is None


def test_json_schema_keeps_the_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    c = constrain(request(response_format=schema_format(schema)), backend="guidance")
    # Enforced closed: no keys beyond its properties (a subset of what the schema allows);
    # outputs are validated against the client's own schema.
    enforced = {**schema, "additionalProperties": False}
    assert c is not None and (c.kind, c.schema) == ("json_schema", schema)
    assert c.shape.content_schema == enforced
    # llguidance takes its whitespace options from the schema it is given.
    sent = dict(c.structured_outputs.json)
    assert sent.pop("x-guidance")["whitespace_flexible"] is False
    assert sent == enforced
    assert c.validate('{"a": 1}') is None
    assert "'a' is a required property" in (c.validate("{}") or "")
    assert "not valid JSON" in (c.validate("{'a': 1}") or "")
    assert "not valid JSON" in (c.validate('{"a": NaN}') or "")


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "nope"}, "not a valid JSON Schema at type"),
        ({"properties": {"a": {"minLength": -1}}}, "not a valid JSON Schema at properties/a"),
        ({"$ref": "https://example.com/s.json"}, "outside the schema"),
        ({"$ref": "#/$defs/missing"}, "reference to nothing"),
        ({"$ref": "#"}, r"\$ref loop .*\(# -> #\)"),
        (
            {
                "$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"$ref": "#/$defs/a"}},
                "properties": {"x": {"$ref": "#/$defs/a"}},
            },
            r"\$ref loop .*#/\$defs/b -> #/\$defs/a -> #/\$defs/b",
        ),
        ({"enum": ["x" * 100] * 700}, "at most 65536 are allowed"),
        ({"items": json.loads('{"items": ' * 40 + "{}" + "}" * 40)}, "levels deep"),
    ],
)
def test_bad_response_format_schema(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match=message) as caught:
        constrain(request(response_format=schema_format(schema)), backend="outlines")
    assert caught.value.param == "response_format"


def test_recursion_that_moves_down_the_instance_is_accepted() -> None:
    """A linked list or a tree: each $ref is one level deeper in the output, so it ends."""
    node = {
        "type": "object",
        "properties": {"next": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/node"}]}},
        "items": {"$ref": "#"},
    }
    schema = {"$defs": {"node": node}, "$ref": "#/$defs/node"}
    c = constrain(request(response_format=schema_format(schema)), backend="outlines")
    assert c is not None and c.schema == schema and c.shape.content_schema == closed(schema)


STRICT_OK = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 1},
        "o": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/o"}]},
    },
    "required": ["n", "o"],
    "additionalProperties": False,
    "$defs": {"o": {"type": "object", "properties": {}, "additionalProperties": False}},
}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"required": ["n"]}, "'o' is not"),
        ({"additionalProperties": True}, "additionalProperties"),
        ({"allOf": [{"type": "object"}]}, "'allOf'"),
        ({"type": "array"}, "root"),
        ({"$defs": {"o": {"type": "object", "properties": {}}}}, "(root)/$defs/o"),
    ],
)
def test_strict_follows_openai_rules(change: dict[str, Any], named: str) -> None:
    fmt: dict[str, Any] = {"type": "json_schema", "json_schema": {"name": "x", "strict": True}}
    fmt["json_schema"]["schema"] = STRICT_OK
    assert constrain(request(response_format=fmt), backend="guidance") is not None
    fmt["json_schema"]["schema"] = {**STRICT_OK, **change}
    with pytest.raises(SchemaError, match=re.escape(named)) as err:
        constrain(request(response_format=fmt), backend="guidance")
    assert err.value.param == "response_format"
    # Without strict the same schema is enforced as it is.
    fmt["json_schema"]["strict"] = False
    if change.get("type") != "array":
        assert constrain(request(response_format=fmt), backend="guidance") is not None
    tool = {"type": "function", "function": {"name": "f", "strict": True,
                                             "parameters": {**STRICT_OK, **change}}}  # fmt: skip
    with pytest.raises(SchemaError) as err:
        constrain(request(tools=[tool], tool_choice="required"), backend="guidance")
    assert err.value.param == "tools"


def test_guidance_drops_only_the_formats_it_does_not_know() -> None:
    schema = {"type": "object", "properties": {
        "u": {"type": "string", "format": "url"}, "e": {"type": "string", "format": "email"},
        "format": {"type": "array", "items": {"type": "string", "format": "path"}}}}  # fmt: skip
    c = constrain(request(response_format=schema_format(schema)), backend="guidance")
    sent = c.structured_outputs.json
    assert (
        "format" not in sent["properties"]["u"]
        and "format" not in sent["properties"]["format"]["items"]
    )
    assert sent["properties"]["e"]["format"] == "email"
    assert "format" in sent["properties"]  # a property named format is not a keyword
    assert schema["properties"]["u"]["format"] == "url"  # the client's copy is untouched


def test_closed_adds_no_other_keys_only_where_nothing_else_may_add_keys() -> None:
    obj = {"type": "object", "properties": {"a": {"type": "integer"}}}
    nested = {"type": "object", "properties": {"o": obj, "l": {"type": "array", "items": obj}}}
    out = closed(nested)
    assert out["additionalProperties"] is False
    assert out["properties"]["o"]["additionalProperties"] is False
    assert out["properties"]["l"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in nested  # a copy
    kept = [
        {**obj, "additionalProperties": True},
        {**obj, "allOf": [{"properties": {"b": {}}}]},
        {**obj, "$ref": "#/$defs/x", "$defs": {"x": {}}},
        {**obj, "anyOf": [{"properties": {"b": {}}}]},
        {**obj, "required": ["a", "b"]},  # b must come from elsewhere
        {**obj, "patternProperties": {"^x": {}}},
    ]
    for schema in kept:
        assert closed(schema).get("additionalProperties") == schema.get("additionalProperties")
    # allOf branches are merged by the backends: never closed one by one. Nor oneOf's: closed,
    # {"dog": "x"} would match one branch where the client's schema matches it by two.
    for key in ("allOf", "oneOf"):
        merged = {key: [obj, {"properties": {"b": {}}}]}
        assert closed(merged) == merged


def test_subschemas_finds_every_place_a_schema_can_stand() -> None:
    leaf = {"type": "integer"}
    places = {
        "properties": {"p": leaf}, "patternProperties": {"^x": leaf}, "$defs": {"d": leaf},
        "definitions": {"d": leaf}, "dependentSchemas": {"p": leaf},
        "dependencies": {"p": leaf, "q": ["p"]}, "items": leaf, "additionalItems": leaf,
        "additionalProperties": leaf, "unevaluatedItems": leaf, "unevaluatedProperties": leaf,
        "contains": leaf, "propertyNames": leaf, "not": leaf, "if": leaf, "then": leaf,
        "else": leaf, "allOf": [leaf], "anyOf": [leaf, True], "oneOf": [leaf],
        "prefixItems": [leaf], "enum": [leaf], "const": leaf, "default": leaf,
    }  # fmt: skip
    found = {(keyword, key) for keyword, key, sub in subschemas(places) if sub is leaf}
    data = {"enum", "const", "default"}  # data, not subschemas; True and ["p"] are no objects
    assert {keyword for keyword, _ in found} == set(places) - data
    assert ("dependencies", "q") not in found and ("anyOf", 1) not in found
    assert list(subschemas({"items": [leaf, leaf]})) == [("items", 0, leaf), ("items", 1, leaf)]


def test_schema_nodes_is_iterative_and_skips_what_it_is_told() -> None:
    deep: dict[str, Any] = {"type": "integer"}
    for _ in range(5000):  # far past Python's recursion limit
        deep = {"not": deep}
    assert sum(1 for _ in schema_nodes(deep)) == 5001
    assert list(schema_nodes(deep, skip=frozenset({"not"}))) == [deep]


def test_the_walks_reach_subschemas_behind_every_keyword() -> None:
    obj = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = closed({"type": "object", "patternProperties": {"^x": obj}})
    assert out["patternProperties"]["^x"]["additionalProperties"] is False
    # A bound Outlines would drop, behind then/else, is named; an unknown format behind
    # patternProperties is dropped for llguidance.
    assert _unenforced({"if": {}, "then": {"properties": {"n": {"maximum": 3}}}}) == {
        "if",
        "maximum",
    }
    fmt = {"patternProperties": {"^u": {"type": "string", "format": "url"}}}
    assert "format" not in _llg_formats(fmt)["patternProperties"]["^u"]


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_a_tool_with_a_ref_loop_is_refused_naming_the_tool(choice: str) -> None:
    tools = [*TOOLS, {"type": "function", "function": {"name": "f", "parameters": {"$ref": "#"}}}]
    with pytest.raises(SchemaError, match=r"tool 'f' has a \$ref loop") as caught:
        constrain(request(tools=tools, tool_choice=choice), backend="xgrammar")
    assert caught.value.param == "tools"


def test_required_allows_any_tool_and_parallel_calls() -> None:
    c = constrain(request(tools=TOOLS, tool_choice="required"), backend="xgrammar")
    assert c is not None and (c.kind, c.param, c.shape.multiple_calls) == (
        "tool_call",
        "tools",
        True,
    )
    assert c.shape.content == "none" and c.schema is None
    names = [branch["properties"]["name"]["const"] for branch in c.call_schema["anyOf"]]
    assert names == ["get_weather", "noargs"]
    no_parallel = request(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert not constrain(no_parallel, backend="xgrammar").shape.multiple_calls
    # Outlines cannot continue after an accepting state (grammars.encode): one call only.
    c = constrain(request(tools=TOOLS, tool_choice="required"), backend="outlines")
    assert not c.shape.multiple_calls


def test_named_choice_allows_that_tool_once() -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    c = constrain(request(tools=TOOLS, tool_choice=choice), backend="outlines")
    assert c is not None and (c.kind, c.shape.multiple_calls) == ("tool_call", False)
    assert c.call_schema["properties"]["name"] == {"const": "get_weather"}


def test_named_choice_must_be_a_tool() -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    with pytest.raises(RequestError, match="get_time") as caught:
        constrain(request(tools=TOOLS, tool_choice=choice), backend="outlines")
    assert caught.value.param == "tool_choice"
    with pytest.raises(RequestError, match="requires tools") as caught:
        constrain(request(tool_choice="required"), backend="outlines")
    assert caught.value.param == "tool_choice"


def test_invalid_tool_parameters_name_the_tool() -> None:
    bad = [{"type": "function", "function": {"name": "f", "parameters": {"type": 1}}}]
    with pytest.raises(SchemaError, match="tool 'f'") as caught:
        constrain(request(tools=bad, tool_choice="auto"), backend="xgrammar")
    assert caught.value.param == "tools"


def test_response_format_conflicts_with_a_forced_call() -> None:
    with pytest.raises(UnsupportedError, match="tool_choice") as caught:
        constrain(
            request(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}),
            backend="outlines",
        )
    assert caught.value.param == "response_format"


def test_auto_allows_content_or_calls() -> None:
    c = constrain(request(tools=TOOLS), backend="outlines")
    assert c is not None and (c.kind, c.shape.content, c.schema) == ("tool_auto", "text", None)
    assert c.validate("anything at all") is None
    c = constrain(request(tools=TOOLS, response_format={"type": "json_object"}), backend="outlines")
    assert c is not None and (c.kind, c.schema) == ("tool_auto", {"type": "object"})


def test_tool_references_survive_embedding() -> None:
    params = {
        "type": "object",
        "properties": {"when": {"$ref": "#/definitions/day"}, "next": {"$ref": "#"}},
        "required": ["when"],
        "definitions": {"day": {"enum": ["mon", "tue"]}},
    }
    tools = [{"type": "function", "function": {"name": "plan", "parameters": params}}]
    c = constrain(request(tools=tools, tool_choice="required"), backend="outlines")
    validator = schema_validator(c.call_schema)
    good = {"name": "plan", "parameters": {"when": "mon", "next": {"when": "tue"}}}
    assert validator.is_valid(good)
    assert not validator.is_valid({"name": "plan", "parameters": {"when": "sun"}})
    assert re.fullmatch(outlines_regex(c.shape), '{"name": "plan", "parameters": {"when": "mon"}}')


# ---------------------------------------------------------------- what the grammars accept


class Matchers:
    """Whether a backend's grammar accepts a text, as that backend sees it."""

    def __init__(self, tokenizer: Any) -> None:
        import llguidance.hf
        from vllm.v1.structured_output.utils import get_outlines_vocabulary

        self.tokenizer = tokenizer
        self.vocabulary = get_outlines_vocabulary(tokenizer).inner
        self.llg_tokenizer = llguidance.hf.from_tokenizer(tokenizer)
        self.indexes: dict[str, Any] = {}

    def accepts(self, backend: str, shape: Shape, text: str) -> bool:
        return getattr(self, backend)(shape, text)

    def outlines(self, shape: Shape, text: str) -> bool:
        """Drive Outlines' own index with the text's token ids, as the engine does."""
        import outlines_core as oc

        regex = outlines_regex(shape)
        if regex not in self.indexes:
            self.indexes[regex] = oc.Index(regex, self.vocabulary)
        guide = oc.Guide(self.indexes[regex])
        tokens = self.tokenizer.encode(text, add_special_tokens=False)
        if not guide.accepts_tokens(tokens):
            return False
        for token in tokens:
            guide.advance(token)
        return guide.is_finished()

    def xgrammar(self, shape: Shape, text: str) -> bool:
        import xgrammar as xgr
        from xgrammar.testing import _is_grammar_accept_string

        tag = BACKENDS["xgrammar"].encode(shape).structural_tag
        return _is_grammar_accept_string(xgr.Grammar.from_structural_tag(tag), text)

    def guidance(self, shape: Shape, text: str) -> bool:
        import llguidance

        grammar = BACKENDS["guidance"].encode(shape).grammar
        matcher = llguidance.LLMatcher(self.llg_tokenizer, grammar, log_level=0)
        tokens = self.tokenizer.encode(text, add_special_tokens=False)
        return matcher.consume_tokens(tokens) and matcher.is_accepting() and not matcher.is_error()


@pytest.fixture(scope="module")
def matchers(smol_tokenizer: Any) -> Matchers:
    return Matchers(smol_tokenizer)


CALL = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
NOARGS = '{"name":"noargs","parameters":{}}'
TWO_CALLS = f"{CALL}; {NOARGS}"
ANSWER = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
CASES = {
    "required": (
        {"tool_choice": "required"},
        [CALL, NOARGS, '{"name":"get_weather","parameters":{"city":"Oslo","unit":"c"}}', TWO_CALLS],
        [
            "Hello",
            "",
            '{"name": "other", "parameters": {}}',
            '{"name": "noargs"}',
            '{"name": "get_weather", "parameters": {}}',
            '{"name": "get_weather", "parameters": {"city": 3}}',
            '{"name": "noargs", "parameters": {"x": 1}}',
            '{"name": "noargs", "parameters": {}, "extra": 1}',
            '{"name":      "noargs", "parameters": {}}',
            f"{CALL} {CALL}",
        ],
    ),
    "named": (
        {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        [CALL],
        [NOARGS, f"{CALL}; {CALL}", "Paris"],
    ),
    "sequential": (
        {"tool_choice": "required", "parallel_tool_calls": False},
        [CALL, NOARGS],
        [TWO_CALLS],
    ),
    "auto": (
        {},
        ["Hello!", " It is sunny.\nMore {braces} later", CALL, TWO_CALLS],
        [
            "",
            "  ",
            '{"name": "other", "parameters": {}}',
            "{not json",
            f" {CALL}",
            f"{CALL} and text",
        ],
    ),
    "auto_schema": (
        {"response_format": schema_format(ANSWER)},
        ['{"answer": 42}', CALL],
        ["Hello", '{"answer": "42"}', '{"answer": 42,}'],
    ),
}


@pytest.mark.parametrize("backend", ["outlines", "xgrammar", "guidance"])
@pytest.mark.parametrize("case", CASES)
def test_tool_grammars_accept_exactly_valid_answers(
    backend: str, case: str, matchers: Matchers
) -> None:
    fields, valid, invalid = CASES[case]
    c = constrain(request(tools=TOOLS, **fields), backend=backend)
    validator = schema_validator(c.call_schema)
    for text in valid:
        several = c.shape.separator + "{" in text
        assert matchers.accepts(backend, c.shape, text) == (
            c.shape.multiple_calls or not several
        ), text
        if text.startswith("{") and "name" in text:
            # Reference check: each accepted call also validates with jsonschema.
            for call in text.split(c.shape.separator):
                assert validator.is_valid(json.loads(call)), call
    for text in invalid:
        assert not matchers.accepts(backend, c.shape, text), text


def test_outlines_masks_characters_split_across_tokens_in_free_text(matchers: Matchers) -> None:
    """outlines_core 0.2.14's lost edges (grammars.encode): SmolLM2 splits these characters
    into byte tokens, which free text cannot use under Outlines; the other backends can."""
    c = constrain(request(tools=TOOLS), backend="outlines")
    assert not matchers.accepts("outlines", c.shape, "日本語です")
    assert matchers.accepts("outlines", c.shape, "naïve café 🙂")
    assert matchers.accepts("xgrammar", c.shape, "日本語です")
    guided = constrain(request(tools=TOOLS), backend="guidance")
    for text in ["日本語です", "絵文字 🎉🚀 ですね", "naïve café 🙂"]:
        assert matchers.accepts("guidance", guided.shape, text), text


def test_guidance_json_mode_nests_deeper_than_outlines(matchers: Matchers) -> None:
    import llguidance

    c = constrain(request(response_format={"type": "json_object"}), backend="guidance")
    grammar = llguidance.LLMatcher.grammar_from_json_schema(c.structured_outputs.json)
    six = '{"a": {"b": {"c": {"d": {"e": {"f": [1, {"g": "日本 🎉"}]}}}}}}'
    matcher = llguidance.LLMatcher(matchers.llg_tokenizer, grammar, log_level=0)
    tokens = matchers.tokenizer.encode(six, add_special_tokens=False)
    assert matcher.consume_tokens(tokens) and matcher.is_accepting(), matcher.get_error()
    # Whitespace stays bounded: one optional space after , and : only.
    matcher = llguidance.LLMatcher(matchers.llg_tokenizer, grammar, log_level=0)
    assert not matcher.consume_tokens(matchers.tokenizer.encode('{"a":   1}'))


def guidance_accepts(matchers: Matchers, schema: dict[str, Any], text: str) -> bool:
    """Whether the guidance grammar for ``response_format: schema`` accepts ``text``, as the
    engine builds it (vLLM's own serializer)."""
    import llguidance
    from vllm.v1.structured_output.backend_guidance import serialize_guidance_grammar
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    c = constrain(request(response_format=schema_format(schema)), backend="guidance")
    grammar = serialize_guidance_grammar(StructuredOutputOptions.JSON, c.structured_outputs.json)
    matcher = llguidance.LLMatcher(matchers.llg_tokenizer, grammar, log_level=0)
    tokens = matchers.tokenizer.encode(text, add_special_tokens=False)
    return matcher.consume_tokens(tokens) and matcher.is_accepting() and not matcher.is_error()


TIMES = {
    "date-time": ("2024-05-01T20:00:00", "+02:00"),
    "time": ("20:00:00", "Z"),
}


@pytest.mark.parametrize("fmt", TIMES)
def test_guidance_bounds_the_seconds_fraction(fmt: str, matchers: Matchers) -> None:
    """At most 9 digits after the seconds' point; the rest of the format is llguidance's."""
    start, zone = TIMES[fmt]
    schema = {"type": "object", "properties": {"t": {"type": "string", "format": fmt}}}
    for fraction, ok in [("", True), (".5", True), (".123456789", True), (".1234567890", False),
                         ("." + "0" * 40, False), (".", False)]:  # fmt: skip
        text = json.dumps({"t": f"{start}{fraction}{zone}"})
        assert guidance_accepts(matchers, schema, text) == ok, text
    assert not guidance_accepts(matchers, schema, json.dumps({"t": f"{start}.5"}))  # no zone
    # Beside the client's own pattern, both hold.
    schema["properties"]["t"]["pattern"] = "^20"
    assert guidance_accepts(matchers, schema, json.dumps({"t": f"{start}.123{zone}"}))
    assert not guidance_accepts(matchers, schema, json.dumps({"t": f"{start}.1234567890{zone}"}))
    assert not guidance_accepts(matchers, schema, json.dumps({"t": f"1{start[1:]}.1{zone}"}))


def test_the_fraction_bound_is_added_only_where_a_time_format_stands() -> None:
    schema = {"type": "object", "properties": {
        "at": {"type": ["string", "null"], "format": "date-time"},
        "day": {"type": "string", "format": "date"},
        "in": {"type": "string", "format": "time", "pattern": "^1", "allOf": [{"minLength": 2}]},
        "format": {"type": "string"}}}  # fmt: skip
    out = _llg_formats(schema)
    props = out["properties"]
    assert props["at"]["pattern"] == props["in"]["allOf"][1]["pattern"]
    assert props["in"]["pattern"] == "^1" and props["in"]["allOf"][0] == {"minLength": 2}
    assert "pattern" not in props["day"] and "pattern" not in props["format"]
    assert "pattern" not in schema["properties"]["at"]  # the client's copy is untouched
    validator = schema_validator(out)
    assert validator.is_valid({"at": None, "in": "10:00:00.5Z"})
    assert not validator.is_valid({"at": "2024-05-01T20:00:00.1234567890Z"})


def test_json_object_regex() -> None:
    c = constrain(request(response_format={"type": "json_object"}), backend="outlines")
    regex = outlines_regex(c.shape)
    # Two container levels below the top object (JSON_OBJECT_DEPTH).
    for text in ["{}", '{"a": 1}', '{"a":{"b":{"c":1}}}', '{"a": [{"b": "x", "c": null}, 2.5]}']:
        assert re.fullmatch(regex, text), text
        assert c.validate(text) is None
    for text in ["[1]", '"a"', '{"a": 1,}', '{"a":  1}', '{"a":{"b":{"c":[1]}}}', "{} "]:
        assert not re.fullmatch(regex, text), text


# ---------------------------------------------------------------- compile checks


@pytest.fixture(scope="module")
def outlines_compiler(smol_tokenizer: Any) -> Any:
    compiler = GrammarCompiler(smol_tokenizer, backend="outlines", timeout=3.0, warmup=False)
    asyncio.run(compiler.start())
    yield compiler
    compiler.close()


def test_pathological_schema_times_out_and_the_compiler_recovers(outlines_compiler: Any) -> None:
    async def scenario() -> None:
        bad = constrain(request(response_format=schema_format(PATHOLOGICAL)), backend="outlines")
        started = time.perf_counter()
        with pytest.raises(SchemaError, match="too complex to compile within 3 s") as caught:
            await outlines_compiler.check(bad)
        assert caught.value.param == "response_format"
        assert time.perf_counter() - started < 3.0 + 5.0  # the bound, plus a loaded machine
        restarts = outlines_compiler.restarts
        assert restarts >= 1
        # The same schema again: the cached verdict, without another compile or restart.
        hits, misses = outlines_compiler.hits, outlines_compiler.misses
        with pytest.raises(SchemaError):
            await outlines_compiler.check(bad)
        assert (outlines_compiler.hits, outlines_compiler.misses) == (hits + 1, misses)
        assert outlines_compiler.restarts == restarts
        # The compiler still works.
        good = constrain(request(tools=TOOLS, tool_choice="required"), backend="outlines")
        checked = await outlines_compiler.check(good)
        assert checked.structured_outputs.regex == outlines_regex(good.shape)

    asyncio.run(scenario())


def test_waiting_does_not_block_the_event_loop(outlines_compiler: Any) -> None:
    async def scenario() -> None:
        slow = {"type": "string", "pattern": "[ab]*b[ab]{21}"}
        constraint = constrain(request(response_format=schema_format(slow)), backend="outlines")
        misses = outlines_compiler.misses
        async with loop_ticks(0.05) as ticks:
            results = await asyncio.gather(
                *(outlines_compiler.check(constraint) for _ in range(3)), return_exceptions=True
            )
        assert all(isinstance(r, SchemaError) for r in results)
        assert outlines_compiler.misses == misses + 1  # identical schemas share one compile
        assert ticks.count >= 20  # the loop ran throughout the 3 s compile

    asyncio.run(scenario())


def test_a_crashed_worker_is_replaced(outlines_compiler: Any) -> None:
    async def scenario() -> None:
        slow = {"type": "string", "pattern": "[ab]*a[ab]{22}"}
        constraint = constrain(request(response_format=schema_format(slow)), backend="outlines")
        await outlines_compiler.start()  # the worker a previous test restarted is ready
        pid = outlines_compiler._worker._process.pid
        check = asyncio.ensure_future(outlines_compiler.check(constraint))
        await asyncio.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(SchemaError, match="ran out of memory"):
            await check
        ok = constrain(request(response_format=schema_format(ANSWER)), backend="outlines")
        assert (await outlines_compiler.check(ok)).structured_outputs.regex

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["xgrammar", "guidance"])
def test_other_backends_check_with_their_compilers(backend: str, smol_tokenizer: Any) -> None:
    async def scenario() -> None:
        async with GrammarCompiler(smol_tokenizer, backend=backend, timeout=10.0) as compiler:
            for fields in [
                {"tools": TOOLS},
                {"tools": TOOLS, "tool_choice": "required"},
                {"response_format": schema_format(WEATHER)},
            ]:
                c = await compiler.check(constrain(request(**fields), backend=backend))
                assert c.structured_outputs is not None
            backref = schema_format({"type": "string", "pattern": "(a)\\1"})
            with pytest.raises(SchemaError, match=f"cannot be enforced by the {backend}"):
                await compiler.check(constrain(request(response_format=backref), backend=backend))
            hits, misses = compiler.hits, compiler.misses
            await compiler.check(constrain(request(tools=TOOLS), backend=backend))
            assert (compiler.hits, compiler.misses) == (hits + 1, misses)  # a cache hit

    asyncio.run(scenario())


def test_outlines_refuses_restricting_keywords_it_would_ignore() -> None:
    from grammars.encode import _schema_regex

    with pytest.raises(ValueError, match="minimum"):
        _schema_regex({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}})
    with pytest.raises(ValueError, match="uniqueItems"):
        _schema_regex({"anyOf": [{"type": "array", "uniqueItems": True}, {"type": "null"}]})
    # Github_easy o45160: outlines_core would build an object for an array schema.
    with pytest.raises(ValueError, match="type array beside object keywords"):
        _schema_regex({"type": "array", "properties": {}, "additionalProperties": False})
    # A property merely named like a keyword is no keyword.
    assert _schema_regex({"type": "object", "properties": {"minimum": {"type": "integer"}}})


def test_the_verdict_cache_is_bounded_in_bytes(smol_tokenizer: Any) -> None:
    """Entries alone would let 256 one-MiB Outlines regexes stay in memory."""
    compiler = GrammarCompiler(
        smol_tokenizer, backend="outlines", cache_size=100, cache_bytes=10_000, warmup=False
    )
    try:
        for i in range(5):
            params = StructuredOutputsParams(regex="a" * 3_000)
            compiler._remember(str(i), CompileResult(ok=True, seconds=0.0, params=params))
            assert compiler.cached_bytes <= 10_000
        assert list(compiler._cache) == ["2", "3", "4"]  # the oldest went first
        assert compiler.cached_bytes == 9_000
        compiler._remember("4", CompileResult(ok=False, seconds=0.0, error="e" * 100))
        assert compiler.cached_bytes == 6_100  # a replaced entry is not counted twice
    finally:
        compiler.close()
