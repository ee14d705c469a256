"""Check a body against OpenAI's published OpenAPI document (vendored in
``tests/data/openai-openapi``, source and commit in its ``SOURCE.md``).

The document is OpenAPI 3.1, whose schemas are JSON Schema 2020-12, but some of them still
carry 3.0's ``nullable: true``, which 2020-12 ignores: each becomes ``anyOf [schema, null]``
once, when the document is loaded. Additional properties are allowed wherever the document
does not forbid them, as it does not for the objects we send.

To check a new kind of body, name its schema in ``components.schemas``::

    assert_conforms(body, "CreateCompletionResponse")

or one of ``WIRE_HABITS``, where OpenAI's service and its document differ.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["DOCUMENT", "WIRE_HABITS", "assert_conforms", "mismatches", "schema_names"]

DOCUMENT = Path(__file__).parents[1] / "data" / "openai-openapi" / "openapi.json"
_URI = "urn:openai-openapi"


def _without_nullable(node: Any) -> Any:
    """The document with every 3.0 ``nullable: true`` spelled the 2020-12 way."""
    if isinstance(node, list):
        return [_without_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _without_nullable(value) for key, value in node.items()}
    if converted.pop("nullable", None) is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def _completion_chunk(schemas: dict[str, Any]) -> dict[str, Any]:
    """OpenAI streams legacy completions as ``CreateCompletionResponse`` objects with
    ``"finish_reason": null`` until a choice's last chunk, which the document (it defines no
    chunk of its own) does not allow: the same object with that one field nullable."""
    chunk = copy.deepcopy(schemas["CreateCompletionResponse"])
    choice = chunk["properties"]["choices"]["items"]["properties"]
    choice["finish_reason"] = {"anyOf": [choice["finish_reason"], {"type": "null"}]}
    return chunk


def _echoed_logprobs(schemas: dict[str, Any]) -> dict[str, Any]:
    """With ``echo`` and ``logprobs``, OpenAI's legacy completions give the prompt's first token
    no logprob: ``token_logprobs`` and ``top_logprobs`` start with ``null`` (a token with nothing
    before it has no probability), which the document's number and object items do not allow."""
    response = copy.deepcopy(schemas["CreateCompletionResponse"])
    choice = response["properties"]["choices"]["items"]["properties"]
    (logprobs, _null) = choice["logprobs"]["anyOf"]
    for name in ("token_logprobs", "top_logprobs"):
        field = logprobs["properties"][name]
        field["items"] = {"anyOf": [field["items"], {"type": "null"}]}
    return response


WIRE_HABITS = {
    # First, so that the chunk below derives from it.
    "CreateCompletionResponse": _echoed_logprobs,
    "CreateCompletionStreamResponse": _completion_chunk,
}
"""Schemas of ours, each derived from the document's where OpenAI's service sends what the
document does not describe; named like the document's own."""


@cache
def _document() -> dict[str, Any]:
    document = _without_nullable(json.loads(DOCUMENT.read_text(encoding="utf-8")))
    schemas = document["components"]["schemas"]
    for name, derive in WIRE_HABITS.items():
        schemas[name] = derive(schemas)
    return document


@cache
def _validator(name: str) -> Draft202012Validator:
    if name not in schema_names():
        raise KeyError(f"{name!r} is not a schema in {DOCUMENT.name}")
    resource = Resource.from_contents(_document(), default_specification=DRAFT202012)
    registry: Registry = Registry().with_resource(_URI, resource)
    return Draft202012Validator({"$ref": f"{_URI}#/components/schemas/{name}"}, registry=registry)


def schema_names() -> frozenset[str]:
    return frozenset(_document()["components"]["schemas"])


def _describe(error: ValidationError) -> str:
    where = error.json_path  # e.g. $.choices[0].message.tool_calls
    rule = "/".join(str(part) for part in error.absolute_schema_path)
    return f"{where}: {error.message} (schema rule {rule})"


def mismatches(body: Any, name: str) -> list[str]:
    """Every place where ``body`` breaks the schema ``name``: its JSON path, what is wrong,
    and the rule of the document it breaks. Empty when the body conforms."""
    errors = list(_validator(name).iter_errors(body))
    if not errors:
        return []
    # An anyOf/oneOf failure holds one sub-error per branch; the best match names the branch
    # the body was closest to, the others follow for context.
    first = best_match(errors)
    return [_describe(first)] + [_describe(e) for e in errors if e is not first]


def assert_conforms(body: Any, name: str) -> None:
    """Fail with every mismatch, paths first, when ``body`` does not validate against ``name``."""
    found = mismatches(body, name)
    if found:
        shown = json.dumps(body)[:2000]
        raise AssertionError(
            f"body does not conform to {name}:\n  " + "\n  ".join(found) + f"\nbody: {shown}"
        )
