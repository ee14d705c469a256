"""Request bodies for each scenario and the check each scenario applies to its output.

``chat`` and ``stream`` are plain chat; ``json`` asks for ``response_format: json_object``
and checks that the content parses as a JSON object; ``tools`` sends ``tools`` with
``tool_choice: "required"`` and checks that every call names a known tool and that its
arguments parse and validate against the tool's JSON Schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jsonschema

__all__ = [
    "SCENARIOS",
    "SYSTEM_PROMPTS",
    "TOOLS",
    "Scenario",
    "build_payload",
    "check_output",
]

Scenario = Literal["chat", "stream", "json", "tools"]
SCENARIOS: tuple[Scenario, ...] = ("chat", "stream", "json", "tools")

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_web",
            "description": "Search the web and return the top results.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "max_results": {"type": "integer", "minimum": 1, "maximum": 20},
                },
                "required": ["query"],
            },
        },
    },
]
"""Two small tools with schemas strict enough that a wrong call is visible."""

SYSTEM_PROMPTS: dict[Scenario, str | None] = {
    "chat": None,
    "stream": None,
    # OpenAI rejects json_object requests whose messages never mention JSON.
    "json": "Answer with a JSON object.",
    "tools": "Use one of the tools to answer.",
}


def build_payload(
    scenario: Scenario,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    max_tokens: int | None,
    *,
    stream: bool,
    ignore_eos: bool,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of one request. ``ignore_eos`` is a vLLM extension the server accepts."""
    body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if ignore_eos:
        body["ignore_eos"] = True
    if scenario == "json":
        body["response_format"] = {"type": "json_object"}
    elif scenario == "tools":
        body["tools"] = TOOLS
        body["tool_choice"] = "required"
    body.update(extra or {})
    return body


def _tool_schemas(tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}


def check_output(
    scenario: Scenario,
    content: str | None,
    tool_calls: Sequence[Mapping[str, Any]],
    finish_reason: str | None,
    tools: Sequence[Mapping[str, Any]] = TOOLS,
) -> str | None:
    """Why the output fails the scenario's contract, or ``None`` when it holds.

    Truncation (``finish_reason == "length"``) is reported as such, since a cut-off JSON
    document says more about ``max_tokens`` than about the server.
    """
    if scenario == "json":
        try:
            value = json.loads(content or "")
        except json.JSONDecodeError:
            return "truncated" if finish_reason == "length" else "json_parse"
        return None if isinstance(value, dict) else "not_object"
    if scenario != "tools":
        return None
    if not tool_calls:
        return "truncated" if finish_reason == "length" else "no_tool_call"
    schemas = _tool_schemas(tools)
    for call in tool_calls:
        function = call.get("function") or {}
        schema = schemas.get(function.get("name"))
        if schema is None:
            return "unknown_tool"
        try:
            arguments = json.loads(function.get("arguments") or "")
        except json.JSONDecodeError:
            return "truncated" if finish_reason == "length" else "args_parse"
        try:
            jsonschema.validate(arguments, schema)
        except jsonschema.ValidationError:
            return "args_schema"
    return None
