"""The JSON tool-call syntax of both model families: rendering history, parsing answers, and
the spelling the grammar enforces.

Llama 3.1 answers a custom tool call with ``{"name": ..., "parameters": {...}}`` (Meta's
reference adds ``"type": "function"``), optionally after ``<|python_tag|>``. SmolLM2 is taught
the same syntax by the tool prompt. Parsing *fails closed*: an answer is either entirely calls
to known tools with arguments that validate, or it is plain content. A half-understood call is
never handed to a client as if the model had produced it correctly.

The whole answer must be calls (Meta's reference decoder also parses the whole message). Text
followed by a call is content: the streamer has already sent such text as content, and the
non-streaming answer must agree with the streamed one.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator, SchemaError, validators
from referencing.exceptions import Unresolvable

from server.chat.protocol import FunctionCall, Tool, ToolCall

__all__ = ["LLAMA3_JSON", "JsonToolCalls", "ParsedAnswer"]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: Python accepts them, clients don't


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


@dataclass(frozen=True, slots=True)
class ParsedAnswer:
    content: str | None
    """The answer's text; None when the answer is tool calls only."""
    calls: list[ToolCall] = field(default_factory=list)


class _NotACall(ValueError):
    """The answer is not (entirely) valid calls; it is returned as content."""


@dataclass(frozen=True, slots=True)
class JsonToolCalls:
    """How a model family writes tool calls as JSON objects: the one definition that the
    prompt (:meth:`format`), the answer parser (:meth:`parse`, :meth:`prefix_verdict`) and the
    grammar (``grammars.ToolCallSyntax``) all use."""

    name_key: str = "name"
    arguments_key: str = "parameters"
    arguments_alias: str = "arguments"
    """Also read as the arguments (OpenAI's spelling; some answers use it)."""
    type_key: str = "type"
    """Optional in an answer; when present its value is ``function``."""
    separator: str = "; "
    """Between parallel calls in the grammar; answers may also use whitespace or nothing."""
    tag: str = "<|python_tag|>"
    """May precede the calls."""

    @property
    def keys(self) -> frozenset[str]:
        return frozenset({self.name_key, self.type_key, self.arguments_key, self.arguments_alias})

    def format(self, calls: list[ToolCall]) -> str:
        """The text of assistant ``calls`` in a prompt: Meta's JSON form, calls back to back.

        Byte for byte what Meta's reference encoder writes (``json.dumps`` defaults, so
        non-ASCII is escaped). Arguments that are not JSON (a client's own history) are kept
        as a string.
        """
        parts = []
        for call in calls:
            try:
                params: Any = json.loads(call.function.arguments)
            except ValueError:
                params = call.function.arguments
            parts.append(
                json.dumps(
                    {
                        self.type_key: "function",
                        self.name_key: call.function.name,
                        self.arguments_key: params,
                    }
                )
            )
        return "".join(parts)

    def parse(self, text: str, tools: list[Tool], *, parallel: bool) -> ParsedAnswer:
        """Split a model answer into OpenAI tool calls, or return it unchanged as content.

        With ``parallel`` False an answer of several calls is not one call: it is content (the
        grammar allows one call then; only unconstrained text, e.g. a free-text answer that
        starts with ``[``, can hold several).
        """
        try:
            objects = self._call_objects(text)
            if len(objects) > 1 and not parallel:
                raise _NotACall
            known = {t.function.name: t for t in tools}
            calls = [self._to_call(obj, known) for obj in objects]
        except _NotACall:
            return ParsedAnswer(content=text)
        return ParsedAnswer(content=None, calls=calls)

    def prefix_verdict(self, text: str) -> bool | None:
        """None once ``text`` cannot grow into an answer that :meth:`parse` accepts; True when
        it begins a call's first key whole (nothing appended changes that, so a streamer need
        not look again); False while it may or may not.

        Not None is a necessary condition only (the streamer holds text back while it holds):
        every prefix of an accepted answer passes, so streamed and non-streamed answers agree.
        """
        s = text.lstrip()
        if self.tag.startswith(s):
            return False
        if s.startswith(self.tag):
            s = s[len(self.tag) :].lstrip()
        if not s:
            return False
        if s[0] == "[":
            s = s[1:].lstrip()
            if not s:
                return False
        if s[0] != "{":
            return None
        s = s[1:].lstrip()
        if not s:
            return False
        if s[0] != '"':
            return None
        # The first key must be (a prefix of) one of the keys a call may have.
        key, closed, _ = s[1:].partition('"')
        if closed:
            return True if key in self.keys else None
        return False if any(k.startswith(key) for k in self.keys) else None

    def _call_objects(self, text: str) -> list[Any]:
        """The JSON values of an answer made only of calls: one object, several objects separated
        by ``;``, whitespace or nothing, or one JSON list."""
        s = text.strip()
        if s.startswith(self.tag):
            s = s[len(self.tag) :].lstrip()
        if s.startswith("["):
            try:
                values = _DECODER.decode(s)
            except (ValueError, RecursionError) as exc:  # deeply nested model output is no call
                raise _NotACall from exc
            if not isinstance(values, list) or not values:
                raise _NotACall
            return values
        values, pos = [], 0
        while pos < len(s):
            try:
                value, pos = _DECODER.raw_decode(s, pos)
            except (ValueError, RecursionError) as exc:
                raise _NotACall from exc
            values.append(value)
            pos = _skip_separator(s, pos, self.separator.strip())
        if not values:
            raise _NotACall
        return values

    def _to_call(self, obj: Any, known: dict[str, Tool]) -> ToolCall:
        if not isinstance(obj, dict) or not set(obj) <= self.keys:
            raise _NotACall
        if obj.get(self.type_key, "function") != "function":
            raise _NotACall
        if self.arguments_key in obj and self.arguments_alias in obj:
            raise _NotACall
        name = obj.get(self.name_key)
        tool = known.get(name) if isinstance(name, str) else None
        if tool is None:
            raise _NotACall
        args = obj.get(self.arguments_key, obj.get(self.arguments_alias, {}))
        if isinstance(args, str):
            # Some answers carry the arguments as a JSON string, as OpenAI's wire format does.
            try:
                args = _DECODER.decode(args)
            except (ValueError, RecursionError) as exc:
                raise _NotACall from exc
        if not isinstance(args, dict):
            raise _NotACall
        schema = tool.function.parameters
        if schema is not None and not _validates(args, schema):
            raise _NotACall
        return ToolCall(
            id=f"call_{secrets.token_hex(12)}",
            function=FunctionCall(
                name=tool.function.name, arguments=json.dumps(args, ensure_ascii=False)
            ),
        )


def _validates(args: dict[str, Any], schema: dict[str, Any]) -> bool:
    """False also when the schema cannot be applied (invalid, or a ``$ref`` that does not
    resolve; remote references are never fetched)."""
    try:
        validator_cls = validators.validator_for(schema, default=Draft202012Validator)
        validator_cls.check_schema(schema)
        return validator_cls(schema).is_valid(args)
    except (SchemaError, Unresolvable):
        return False


def _skip_separator(s: str, pos: int, mark: str) -> int:
    """Past whitespace, then ``mark`` (the separator's non-space part) and whitespace again."""
    while pos < len(s) and s[pos].isspace():
        pos += 1
    if mark and s.startswith(mark, pos):
        pos += len(mark)
        while pos < len(s) and s[pos].isspace():
            pos += 1
    return pos


LLAMA3_JSON = JsonToolCalls()
"""Llama 3.1's JSON tool calls (Meta's ``prompt_format.md``); SmolLM2 is prompted to use the
same."""
