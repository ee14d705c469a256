"""Spell a :class:`~grammars.shape.Shape` for one structured-output backend of vLLM.

Whitespace is bounded everywhere: a constrained model that may pad with whitespace sometimes
does, until it runs out of tokens. Outlines gets ``[ ]?`` between JSON tokens, XGrammar at most
one whitespace character (``max_whitespace_cnt``) and llguidance ``[ ]?`` after ``,`` and
``:`` only. Compact JSON and ``json.dumps``' default style pass on all three.

XGrammar's plain ``json=`` / ``json_object=`` requests (no tools) rely on the *engine* option
``structured_outputs_config.disable_any_whitespace``: vLLM 0.32 ignores the per-request flag
of the same name, which is set here anyway for the day it does not. llguidance takes its
options from the schema itself (``x-guidance``), which overrides the engine's.

* **outlines** gets one regex for everything: vLLM's Outlines backend has no ``json_object``
  and would build its regex with unbounded whitespace. JSON mode is Outlines' regex for
  ``{"type": "object"}``: objects and arrays nest at most two levels below the top object, and
  its index over Llama 3's 128k-token vocabulary takes 8 to 20 s to build on a loaded 2-core
  machine (SmolLM2's 49k: about 5 s). :class:`~grammars.compiler.GrammarCompiler` builds it at
  start-up, so requests never wait on it; the engine's own limit,
  ``VLLM_REGEX_COMPILATION_TIMEOUT_S`` (default 5 s), must be raised to match.
* **xgrammar** gets ``json`` / ``json_object``, or a structural tag when tool calls are allowed
  (``or``, ``sequence`` and ``star`` compose the content and the calls).
* **guidance** gets ``json`` (the schema, or ``{"type": "object"}`` for JSON mode, with its
  ``x-guidance`` options), or a Lark grammar with ``%json`` rules when tool calls are allowed.

Free text (``tool_choice: auto``) is any text with a first non-space character that is not
``{``: an opening brace commits the model to a valid call. It costs little (29 DFA states), so
auto is constrained on every backend; the cost is that a free-text answer cannot start with
``{`` (nor be empty).

Outlines (``outlines_core`` 0.2.14, which vLLM 0.32 uses) drops every token edge that leaves an
accepting state of the DFA for a state that is not accepting (``regex-automata`` reports
matches one byte late and ``Index`` mistakes that for the end of the match). Three
consequences, checked in the tests by driving the real index with token ids:

* parallel calls cannot be enforced: after the first call's ``}`` nothing but EOS is allowed,
  so the Outlines regex allows one call (the other backends join calls with the separator);
* free text must be non-empty, or the first ``{`` of a call would leave an accepting state;
* in free text, a token that ends inside a UTF-8 character (characters the tokenizer splits,
  such as some CJK or emoji) is masked. JSON strings are not affected: inside a string the
  DFA is never in an accepting state.

Building an Outlines regex can take unbounded time and memory (one JSONSchemaBench schema makes
``build_regex_from_schema`` allocate 20 GB), so for Outlines :func:`outlines` runs only in the
compile worker, never in the server process. The other encodings are a ``json.dumps``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from outlines_core.json_schema import build_regex_from_schema
from vllm.sampling_params import StructuredOutputsParams

from grammars.schema_checks import schema_entries, schema_nodes
from grammars.shape import Shape

__all__ = ["FREE_TEXT", "WHITESPACE", "check_shape", "guidance", "outlines", "xgrammar"]

WHITESPACE = r"[ ]?"
"""Between JSON tokens: one optional space, enough for both compact and ``json.dumps`` style."""

_ANY_OBJECT: dict[str, Any] = {"type": "object"}

FREE_TEXT = r"\s*[^{\s][\s\S]*"
"""Text with a non-space character, the first of which is not ``{``."""


def check_shape(shape: Shape) -> None:
    """Refuse a shape that needs no constraint or allows nothing (a caller's bug)."""
    if shape.content == "text" and shape.call_schema is None:
        raise ValueError("free text without tool calls needs no constraint")
    if shape.content == "none" and shape.call_schema is None:
        raise ValueError("a shape must allow content or tool calls")


# ---------------------------------------------------------------- outlines


def outlines(shape: Shape) -> StructuredOutputsParams:
    return StructuredOutputsParams(regex=outlines_regex(shape))


def outlines_regex(shape: Shape) -> str:
    """One regex for the whole shape: content and calls as alternatives."""
    parts = []
    if shape.content == "text":
        parts.append(FREE_TEXT)
    elif shape.content == "object":
        parts.append(_schema_regex(_ANY_OBJECT))
    elif shape.content == "schema":
        parts.append(_schema_regex(shape.content_schema))
    if shape.call_schema is not None:
        parts.append(_schema_regex(shape.call_schema))  # one call: no parallel_calls
    return parts[0] if len(parts) == 1 else "|".join(f"({p})" for p in parts)


def _schema_regex(schema: dict[str, Any] | None) -> str:
    ignored = sorted(_unenforced(schema or {}))
    if ignored:
        # outlines_core drops these silently: the output could break them and would then be a
        # failed_generation. Refusing up front keeps "compiles" meaning "is enforced".
        raise ValueError(f"outlines does not enforce {', '.join(map(repr, ignored))}")
    return build_regex_from_schema(json.dumps(schema), whitespace_pattern=WHITESPACE)


OUTLINES_UNENFORCED = frozenset(
    {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
     "contains", "not", "patternProperties", "propertyNames", "maxProperties", "dependencies",
     "dependentRequired", "dependentSchemas", "if"}
)  # fmt: skip
"""Restricting keywords that outlines_core 0.2.14 accepts and ignores (checked by building the
regex with and without each). Keywords it ignores that only loosen a schema are harmless."""

_OBJECT_KEYWORDS = frozenset({"properties", "additionalProperties", "required", "minProperties"})


def _unenforced(schema: dict[str, Any]) -> set[str]:
    """The restricting keywords outlines ignores, anywhere a subschema can stand."""
    found: set[str] = set()
    for node in schema_nodes(schema):
        found |= OUTLINES_UNENFORCED.intersection(node)
        types = node.get("type")
        types = {types} if isinstance(types, str) else set(types or [])
        if types and "object" not in types and _OBJECT_KEYWORDS.intersection(node):
            # outlines_core builds an object for these keywords whatever "type" says.
            found.add(f"type {'/'.join(sorted(types))} beside object keywords")
    return found


# ---------------------------------------------------------------- xgrammar


def xgrammar(shape: Shape) -> StructuredOutputsParams:
    if shape.call_schema is not None:
        return StructuredOutputsParams(structural_tag=json.dumps(_structural_tag(shape)))
    if shape.content == "object":
        return StructuredOutputsParams(json_object=True, disable_any_whitespace=True)
    return StructuredOutputsParams(json=shape.content_schema, disable_any_whitespace=True)


def _structural_tag(shape: Shape) -> dict[str, Any]:
    elements = []
    if shape.content == "text":
        elements.append({"type": "regex", "pattern": FREE_TEXT})
    elif shape.content in ("object", "schema"):
        elements.append(_xg_json(shape.content_schema or _ANY_OBJECT))
    call = _xg_json(shape.call_schema or {})
    if shape.multiple_calls:
        more = {"type": "sequence", "elements": [_xg_const(shape.separator), call]}
        call = {"type": "sequence", "elements": [call, {"type": "star", "content": more}]}
    elements.append(call)
    fmt = elements[0] if len(elements) == 1 else {"type": "or", "elements": elements}
    return {"type": "structural_tag", "format": fmt}


def _xg_json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": 1}


def _xg_const(text: str) -> dict[str, Any]:
    return {"type": "const_string", "value": text}


# ---------------------------------------------------------------- guidance

# Options in the schema override vLLM's defaults. llguidance reads the separators as regexes;
# its ``whitespace_pattern`` would not bound anything: it is skipped between tokens as often as
# it matches. ``oneOf`` is enforced as ``anyOf`` (XGrammar does the same); an output matching
# several branches fails the validation that follows generation.
_LLG_OPTIONS = {
    "whitespace_flexible": False,
    "item_separator": f",{WHITESPACE}",
    "key_separator": f":{WHITESPACE}",
    "coerce_one_of": True,
}


def guidance(shape: Shape) -> StructuredOutputsParams:
    if shape.call_schema is not None:
        return StructuredOutputsParams(grammar=_lark(shape))
    return StructuredOutputsParams(json=_llg_schema(shape.content_schema or _ANY_OBJECT))


def _lark(shape: Shape) -> str:
    rules, start = [], []
    if shape.content == "text":
        start.append("TEXT")
        rules.append(f"TEXT: /{FREE_TEXT}/")
    elif shape.content in ("object", "schema"):
        start.append("content")
        rules.append(f"content: {_lark_json(shape.content_schema or _ANY_OBJECT)}")
    sep = json.dumps(shape.separator)
    start.append("calls")
    rules.append(f"calls: call ({sep} call)*" if shape.multiple_calls else "calls: call")
    rules.append(f"call: {_lark_json(shape.call_schema or {})}")
    return "\n".join([f"start: {' | '.join(start)}", *rules]) + "\n"


def _lark_json(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps(_llg_schema(schema))


LLG_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid", "uri"}
)
"""The ``format`` values llguidance 1.7 enforces; it refuses a schema with any other."""

SECONDS_FRACTION_DIGITS = 9
"""At most this many digits after the seconds' decimal point in ``date-time`` and ``time``."""

_BOUNDED_FRACTION = rf"^[^.]*(\.[0-9]{{1,{SECONDS_FRACTION_DIGITS}}}[^0-9][^.]*)?$"
"""A string whose one ``.``, if any, has 1 to 9 digits after it and something else after
those: beside llguidance's ``date-time`` / ``time`` regex (the only ``.`` in those is the
seconds' decimal point, always followed by a time zone), the seconds' fraction is bounded."""
_FRACTION_FORMATS = frozenset({"date-time", "time"})


def _llg_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {**_llg_formats(schema), "x-guidance": _LLG_OPTIONS}


def _llg_formats(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``format`` values fit for llguidance.

    * The ones llguidance does not know (``url``, ``path``, ...) are dropped. ``format`` is an
      annotation unless a validator opts in (JSON Schema 2020-12), and the server's output
      check does not opt in: dropping the ones llguidance cannot enforce loses nothing the
      schema guarantees, where keeping them would refuse the whole schema.
    * ``date-time`` and ``time`` get at most :data:`SECONDS_FRACTION_DIGITS` digits of
      seconds' fraction (RFC 3339 allows any number): nanoseconds are the finest any common
      date type keeps (Python's ``datetime`` keeps microseconds, JavaScript's ``Date``
      milliseconds), and at temperature 0 a small model otherwise writes ``20:00:00.000...``
      until ``max_tokens``. Added as a ``pattern`` (beside an existing one, in ``allOf``),
      which llguidance intersects with the format's own regex.
    """
    if not any(key == "format" for _, key, _ in schema_entries(schema)):
        return schema
    out = copy.deepcopy(schema)
    for node in schema_nodes(out):
        fmt = node.get("format")
        if not isinstance(fmt, str):
            continue
        if fmt not in LLG_FORMATS:
            del node["format"]
        elif fmt in _FRACTION_FORMATS:
            if "pattern" in node:  # allOf is a list: the schema passed its meta-schema
                node["allOf"] = [*node.get("allOf", []), {"pattern": _BOUNDED_FRACTION}]
            else:
                node["pattern"] = _BOUNDED_FRACTION
    return out
