"""Cheap checks on a client's JSON Schema, run before any grammar is built.

A schema reaches three consumers: a grammar compiler (whose cost grows with the schema), the
engine, and ``jsonschema`` when the output is validated. Each check here is linear in the size
of the schema, so a hostile schema is refused before it costs anything:

* size and nesting caps: the compilers' cost grows steeply with both, and vLLM itself refuses
  documents nested deeper than 64;
* no remote ``$ref``: resolving one would make the server fetch URLs (or read files) on a
  client's behalf, and no backend resolves them anyway;
* no ``$ref`` loop that stays at one place of the instance (``{"$ref": "#"}``, ``a -> b ->
  a``): such a schema describes nothing, ``jsonschema`` recurses on it forever, and Outlines
  silently drops the property that holds it, so its grammar would not match the schema;
* the schema must be valid against its own meta-schema, so that validating the output later
  means something.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote

from jsonschema.exceptions import SchemaError as JsonSchemaSchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, validator_for

from grammars.errors import SchemaError

__all__ = [
    "MAX_SCHEMA_BYTES",
    "MAX_SCHEMA_DEPTH",
    "check_schema",
    "check_strict",
    "schema_nodes",
    "schema_validator",
    "subschemas",
    "value_depth",
]

MAX_SCHEMA_BYTES = 64 * 1024
"""Largest schema accepted, as compact JSON. JSONSchemaBench's largest is 59,696 bytes."""

MAX_SCHEMA_DEPTH = 32
"""Deepest nesting of JSON objects and arrays in a schema document (JSONSchemaBench: 24)."""

# Keywords whose values are data, not subschemas: a "$ref" key inside them is not a reference.
DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples", "example"})
_REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")


def value_depth(value: Any) -> int:
    """Nesting depth of objects and arrays in ``value`` (a scalar is 0), without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth = max(depth, level)
        stack.extend((child, level + 1) for child in children)
    return depth


def schema_validator(schema: dict[str, Any]) -> Validator:
    """A validator for ``schema`` in its declared draft; an unknown ``$schema`` means 2020-12.

    Passing a default keeps jsonschema from warning (and, in later releases, failing) on a
    ``$schema`` it does not know; use this for the outputs too, so both sides agree.
    """
    return _validator_class(schema)(schema)


def _validator_class(schema: dict[str, Any]) -> type[Validator]:
    return validator_for(schema, default=Draft202012Validator)


def schema_entries(schema: Any) -> Iterator[tuple[dict[str, Any], str, Any]]:
    """Every ``(object, key, value)`` in ``schema``, not descending into keywords whose values
    are data (``enum``, ``const``, ...): those may hold anything, ``$ref`` look-alikes too."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                yield node, key, value
                if key not in DATA_KEYWORDS:
                    stack.append(value)


# Where JSON Schema (drafts 4 to 2020-12) keeps subschemas: maps of them, one, or lists of them
# (``items`` is one or a list, by draft; ``dependencies`` maps to a schema or a list of names).
_SUB_MAPS = (
    "properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"
)  # fmt: skip
_SUB_ONE = (
    "items", "additionalItems", "additionalProperties", "unevaluatedItems",
    "unevaluatedProperties", "contains", "propertyNames", "not", "if", "then", "else",
)  # fmt: skip
_SUB_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")


def subschemas(node: Any) -> Iterator[tuple[str, str | int | None, dict[str, Any]]]:
    """``(keyword, key or index or None, subschema)`` for each direct subschema of ``node``
    that is an object (a boolean schema has nothing below it)."""
    if not isinstance(node, dict):
        return
    for keyword in _SUB_MAPS:
        if isinstance(node.get(keyword), dict):
            for key, sub in node[keyword].items():
                if isinstance(sub, dict):
                    yield keyword, key, sub
    for keyword in _SUB_ONE:
        if isinstance(node.get(keyword), dict):
            yield keyword, None, node[keyword]
    for keyword in _SUB_LISTS:
        if isinstance(node.get(keyword), list):
            for index, sub in enumerate(node[keyword]):
                if isinstance(sub, dict):
                    yield keyword, index, sub


def schema_nodes(
    schema: dict[str, Any], *, skip: frozenset[str] = frozenset()
) -> Iterator[dict[str, Any]]:
    """``schema`` and every subschema below it, without recursion, not entering the keywords
    in ``skip``. Each node once: a document is a tree, so this is linear in its size."""
    stack = [schema]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(sub for keyword, _, sub in subschemas(node) if keyword not in skip)


def _refs(schema: Any) -> list[str]:
    """Every reference string in ``schema``."""
    return [
        value
        for _, key, value in schema_entries(schema)
        if key in _REF_KEYWORDS and isinstance(value, str)
    ]


_MISSING = object()


def _resolve(schema: dict[str, Any], ref: str) -> Any:
    """The node a local JSON-pointer reference (``#``, ``#/a/b``) names; ``_MISSING`` if none,
    None for a named anchor (``#name``), which jsonschema checks when it validates."""
    if ref == "#":
        return schema
    if not ref.startswith("#/"):
        return None
    node: Any = schema
    for raw in ref[2:].split("/"):
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


# Keywords that apply their subschemas to the same instance: a $ref cycle through them (and
# $ref itself) never moves down the instance, so it never ends.
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_MANY = ("allOf", "anyOf", "oneOf")


def _in_place(schema: dict[str, Any], node: dict[str, Any]) -> Iterator[Any]:
    """The subschemas applied to the same instance as ``node``."""
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        target = _resolve(schema, ref)
        if isinstance(target, dict):
            yield target
    for key in _IN_PLACE_ONE:
        yield node.get(key)
    for key in _IN_PLACE_MANY:
        if isinstance(node.get(key), list):
            yield from node[key]


def _ref_loop(schema: dict[str, Any]) -> list[str] | None:
    """The ``$ref`` strings of a loop that stays at one instance location, if there is one."""
    done: set[int] = set()
    for start, key, _ in schema_entries(schema):
        if key != "$ref" or id(start) in done:
            continue
        # Depth-first from ``start``; ``path`` holds the nodes on the current branch.
        path: list[dict[str, Any]] = [start]
        on_path = {id(start)}
        branches = [_in_place(schema, start)]
        while branches:
            child = next(branches[-1], _MISSING)
            if child is _MISSING:
                branches.pop()
                node = path.pop()
                on_path.discard(id(node))
                done.add(id(node))
                continue
            if not isinstance(child, dict) or id(child) in done:
                continue
            if id(child) in on_path:
                loop = path[[id(n) for n in path].index(id(child)) :]
                return [n["$ref"] for n in loop if isinstance(n.get("$ref"), str)]
            path.append(child)
            on_path.add(id(child))
            branches.append(_in_place(schema, child))
    return None


def check_schema(schema: Any, *, param: str, what: str) -> None:
    """Raise SchemaError naming ``param`` unless ``schema`` is small, local and valid.

    ``what`` names the schema in the message (``"response_format.json_schema.schema"``,
    ``"the parameters of tool 'get_weather'"``).
    """
    if not isinstance(schema, dict):
        raise SchemaError(f"{what} must be a JSON object", param=param)
    depth = value_depth(schema)
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaError(
            f"{what} nests {depth} levels deep; at most {MAX_SCHEMA_DEPTH} are allowed",
            param=param,
        )
    # Depth first: json.dumps recurses, and would overflow on a very deep document.
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_BYTES:
        raise SchemaError(
            f"{what} is {size} bytes; at most {MAX_SCHEMA_BYTES} are allowed", param=param
        )
    refs = _refs(schema)
    remote = [ref for ref in refs if not ref.startswith("#")]
    if remote:
        raise SchemaError(
            f"{what} uses a reference outside the schema ({remote[0]!r}); only local "
            "references starting with '#' are supported",
            param=param,
        )
    dangling = [ref for ref in refs if _resolve(schema, ref) is _MISSING]
    if dangling:
        raise SchemaError(f"{what} has a reference to nothing: {dangling[0]!r}", param=param)
    loop = _ref_loop(schema)
    if loop:
        raise SchemaError(
            f"{what} has a $ref loop that never reaches a type ({' -> '.join(loop + loop[:1])})",
            param=param,
        )
    try:
        _validator_class(schema).check_schema(schema)
    except JsonSchemaSchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise SchemaError(
            f"{what} is not a valid JSON Schema at {where}: {exc.message}", param=param
        ) from exc


STRICT_UNSUPPORTED = frozenset(
    {"allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
     "patternProperties", "unevaluatedProperties", "propertyNames", "minProperties",
     "maxProperties"}
)  # fmt: skip
"""Keywords OpenAI's strict mode does not support (its Structured Outputs guide)."""


def check_strict(schema: dict[str, Any], *, param: str, what: str) -> None:
    """Raise SchemaError naming ``param`` unless ``schema`` follows OpenAI's strict-mode rules:
    the root is an object (not ``anyOf``), every object lists all its ``properties`` in
    ``required`` and sets ``additionalProperties: false``, and no keyword outside strict mode's
    subset is used. Run after :func:`check_schema` (so the schema is small and valid)."""
    if schema.get("type") != "object" or "anyOf" in schema:
        raise SchemaError(
            f"{what} must have an object at its root (type: object, not anyOf) with strict: true",
            param=param,
        )
    stack: list[tuple[dict[str, Any], str]] = [(schema, "(root)")]
    while stack:
        node, where = stack.pop()
        used = sorted(STRICT_UNSUPPORTED.intersection(node))
        if used:
            raise SchemaError(
                f"{what} uses {used[0]!r} at {where}, which strict: true does not support",
                param=param,
            )
        props = node.get("properties")
        if isinstance(props, dict) or node.get("type") == "object":
            if node.get("additionalProperties") is not False:
                raise SchemaError(
                    f"{what}: with strict: true, 'additionalProperties' must be false at {where}",
                    param=param,
                )
            missing = sorted(set(props or {}) - set(node.get("required") or []))
            if missing:
                raise SchemaError(
                    f"{what}: with strict: true, every property must be required; "
                    f"{missing[0]!r} is not at {where}",
                    param=param,
                )
        for keyword, key, sub in subschemas(node):
            stack.append((sub, f"{where}/{keyword}" + ("" if key is None else f"/{key}")))
