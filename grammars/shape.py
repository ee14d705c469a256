"""What an output may look like, before any backend is chosen.

A :class:`Shape` says which content is allowed (none, free text, any JSON object, or a JSON
Schema) and which tool calls (a schema for one call, one or several calls). Every backend
encodes the same shape in its own syntax (:mod:`grammars.encode`), so the backends differ in
spelling only, never in what they accept.

A tool call is one JSON object ``{<name key>: "<tool>", <arguments key>: {...}}``, as Llama 3.1
writes them. The spelling (key names, separator between parallel calls) comes from the
model's chat format as a :class:`ToolCallSyntax`; nothing here is specific to one model family.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from grammars.schema_checks import schema_entries, schema_nodes

__all__ = ["EMPTY_PARAMETERS", "Shape", "ToolCallSyntax", "call_schema", "closed"]

EMPTY_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {},
    "additionalProperties": False,
}
"""A tool without ``parameters`` takes no arguments (OpenAI: "omitting parameters defines a
function with an empty parameter list")."""


class ToolCallSyntax(Protocol):
    """How a model family writes tool calls as JSON (its chat format's ``tool_calls``)."""

    @property
    def name_key(self) -> str: ...
    @property
    def arguments_key(self) -> str: ...
    @property
    def separator(self) -> str:
        """Between parallel calls in one message."""
        ...


@dataclass(frozen=True, slots=True)
class Shape:
    """The set of outputs a constraint allows; plain data, so it can be hashed and pickled."""

    content: Literal["none", "text", "object", "schema"]
    """``none``: content is not allowed (a call is forced); ``text``: non-empty free text that
    does not start with ``{``; ``object``: any JSON object; ``schema``: JSON valid for
    ``content_schema``."""
    content_schema: dict[str, Any] | None = None
    call_schema: dict[str, Any] | None = None
    """The schema of one tool call; None when no call is allowed."""
    multiple_calls: bool = False
    """Several calls joined by ``separator`` (parallel tool calls)."""
    separator: str = "; "


def call_schema(tools: dict[str, dict[str, Any]], syntax: ToolCallSyntax) -> dict[str, Any]:
    """The schema of one call to any of ``tools`` (name to parameters schema).

    Each tool's parameters go under ``$defs/<name>`` and the call refers to them, so that the
    tool's own local references (``#/definitions/x``, ``#``) can be rewritten to stay valid:
    a reference through ``anyOf/<index>`` would be simpler but Outlines and XGrammar cannot
    follow a JSON pointer through an array.
    """
    calls = [
        {
            "type": "object",
            "properties": {
                syntax.name_key: {"const": name},
                syntax.arguments_key: {"$ref": f"#/$defs/{name}"},
            },
            "required": [syntax.name_key, syntax.arguments_key],
            "additionalProperties": False,
        }
        for name in tools
    ]
    schema: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
    schema["$defs"] = {name: _rebase(params, f"#/$defs/{name}") for name, params in tools.items()}
    return schema


def _rebase(schema: dict[str, Any], base: str) -> dict[str, Any]:
    """A copy of ``schema`` to embed at JSON pointer ``base``, its local refs rewritten.

    ``$schema`` and ``$id`` are dropped: they are only allowed at a document's root, and an
    ``$id`` would make references resolve against the wrong base. Tool names match
    ``[a-zA-Z0-9_-]``, so ``base`` needs no JSON-pointer escaping.
    """
    out = copy.deepcopy(schema)
    out.pop("$schema", None)
    out.pop("$id", None)
    for node, key, value in list(schema_entries(out)):
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            rest = value[1:]
            node[key] = base + rest if rest.startswith("/") or not rest else value
    return out


# A node with one of these may get its properties from elsewhere: closing it could forbid them.
_OPEN_BESIDE = frozenset(
    {"additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "anyOf",
     "oneOf", "$ref", "if", "dependentSchemas", "dependencies", "propertyNames", "not"}
)  # fmt: skip
# Not entered: allOf (its branches are merged: closing one forbids the others' keys), oneOf
# (closing its branches could let an output match one branch where the client's schema
# matched it by several, which oneOf forbids), and negations and conditions (closing inside
# not/if widens what they allow; then/else/dependentSchemas add keys to the object beside).
_NOT_CLOSED = frozenset(
    {"allOf", "oneOf", "not", "if", "then", "else", "dependentSchemas", "dependencies",
     "propertyNames", "unevaluatedProperties", "unevaluatedItems"}
)  # fmt: skip


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` whose objects with ``properties`` and no word on other keys allow
    no other keys (``additionalProperties: false``).

    What it allows is a subset of what ``schema`` allows, so every output valid under it is
    valid under the client's schema. It is what the backends enforce: left open, a small model
    keeps inventing keys (and may never close the object), and OpenAI's strict mode demands it
    anyway. Left alone where the object's keys may come from elsewhere (``allOf`` branches
    are merged, a ``$ref`` or ``anyOf`` beside ``properties`` may add keys, a ``required`` key
    not among ``properties``) or where the client said something about other keys.
    """
    out = copy.deepcopy(schema)
    for node in schema_nodes(out, skip=_NOT_CLOSED):
        props = node.get("properties")
        required = node.get("required")
        if (
            isinstance(props, dict)
            and not _OPEN_BESIDE.intersection(node)
            and (not isinstance(required, list) or set(required) <= set(props))
        ):
            node["additionalProperties"] = False
    return out
