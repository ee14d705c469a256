"""The OpenAPI document at ``/openapi.json``, made to describe what the server really sends.

FastAPI's generated document knows only the success bodies. This adds what clients and the
schema fuzzer (``tests/e2e/test_schema_fuzz.py``) need to hold the server to its word:

- every error status an operation can answer, each with the ``{"error": {...}}`` envelope
  (and no FastAPI 422: validation errors are 400 here);
- the streamed answers of ``/v1/chat/completions`` and ``/v1/completions`` as
  ``text/event-stream`` of ``ChatCompletionChunk`` (or ``CompletionResponse``) events;
- ``/health``'s body, and the request fields that are accepted and ignored;
- the rules the request validators enforce beyond field types, where JSON Schema can say them
  (what each message role needs, tool name pattern, stop limits, json_schema's schema), so
  that a request valid by the document is refused only for what the document cannot say
  (the last message's role, the model's context and vocabulary).

The routes stay as they are; the document is rewritten once, when first asked for.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import JsonSchemaMode

from server.chat.protocol import (
    MAX_MESSAGES,
    MAX_TOOLS,
    TOOL_NAME,
    ChatCompletionChunk,
    ChatCompletionRequest,
)
from server.common.protocol import GenerationRequest
from server.completions.protocol import CompletionRequest, CompletionResponse

__all__ = ["ErrorResponse", "HealthStatus", "document_api"]


class ErrorDetail(BaseModel):
    """OpenAI's error object; Cerebras's JSON-mode errors add ``failed_generation``."""

    model_config = ConfigDict(extra="allow")

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail
    status_code: int
    """The HTTP status the error stands for (Cerebras): in a stream's error event too."""


class HealthStatus(BaseModel):
    status: str
    """``ok`` while every engine is alive."""
    models: list[str]


_WHY = {
    400: "Invalid request: the message names the parameter (`param`).",
    401: "Missing or wrong API key (when keys are configured).",
    404: "Unknown model or path.",
    405: "Method not allowed on this path.",
    408: "The request body did not arrive within the configured time.",
    413: "Request body larger than the configured limit (once inflated, for gzip).",
    415: "A Content-Encoding other than gzip.",
    429: "Too many requests waiting, or a rate limit reached; see Retry-After.",
    431: "Request headers larger than the configured limit.",
    500: "A server bug; the message never carries a traceback.",
    503: "The engine stopped, or the server is shutting down.",
    504: "The request took longer than the configured timeout.",
}
_COMMON = (401, 405, 408, 431, 500, 503)
_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("/v1/chat/completions", "post"): (400, 404, 413, 415, 429, 504, *_COMMON),
    ("/v1/completions", "post"): (400, 404, 413, 415, 429, 504, *_COMMON),
    ("/v1/models", "get"): _COMMON,
    ("/v1/models/{model_id}", "get"): (404, *_COMMON),
    ("/health", "get"): _COMMON,
    ("/v1/tcp_warming", "get"): _COMMON,
}
_REF = "#/components/schemas/"
_STREAMS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionChunk,
    "/v1/completions": CompletionResponse,
}
"""Each streaming operation and the model of its events."""
_REQUESTS: dict[str, type[GenerationRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}
"""Each generating operation and its body, which the route reads itself (server.http.body)."""


def document_api(app: FastAPI) -> None:
    """Replace ``app.openapi`` with the completed document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = complete(doc)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with error responses, the event stream, health body and ignored fields."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    models: list[type[BaseModel]] = [ErrorResponse, HealthStatus, *_STREAMS.values()]
    for model in models:
        _add_model(schemas, model)
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    error = {"application/json": {"schema": {"$ref": _REF + "ErrorResponse"}}}
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in _ERRORS.get((path, method), _COMMON):
                responses[str(status)] = {"description": _WHY[status], "content": error}
    _health(doc)
    for path, chunk in _STREAMS.items():
        _stream(doc, path, chunk.__name__)
    for path, request in _REQUESTS.items():
        _add_model(schemas, request, mode="validation")
        _body(doc, path, request.__name__)
        _request(schemas, request)
    _chat_rules(schemas)
    _completion_rules(schemas)
    return doc


def _add_model(
    schemas: dict[str, Any], model: type[BaseModel], mode: JsonSchemaMode = "serialization"
) -> None:
    schema = model.model_json_schema(ref_template=_REF + "{model}", mode=mode)
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas[model.__name__] = schema


def _body(doc: dict[str, Any], path: str, model: str) -> None:
    operation = doc["paths"].get(path, {}).get("post")
    if operation:
        operation["requestBody"] = {
            "content": {"application/json": {"schema": {"$ref": _REF + model}}},
            "required": True,
        }


def _health(doc: dict[str, Any]) -> None:
    operation = doc["paths"].get("/health", {}).get("get")
    if operation:
        operation["responses"]["200"] = {
            "description": "Every engine is alive.",
            "content": {"application/json": {"schema": {"$ref": _REF + "HealthStatus"}}},
        }


def _stream(doc: dict[str, Any], path: str, chunk: str) -> None:
    operation = doc["paths"].get(path, {}).get("post")
    if not operation:
        return
    ok = operation["responses"]["200"]
    ok["description"] = (
        "The completion; with `stream: true`, server-sent events: each `data:` line is a "
        f"{chunk} (or an error envelope if the stream fails), then `data: [DONE]`."
    )
    # Before OpenAPI 3.2 (itemSchema), an event stream's schema describes one event, as
    # schemathesis reads it: every event's data is a chunk or an error envelope, as JSON,
    # except the final [DONE].
    json_event = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [{"$ref": _REF + chunk}, {"$ref": _REF + "ErrorResponse"}]},
    }
    ok["content"]["text/event-stream"] = {
        "schema": {
            "type": "object",
            "properties": {"data": {"anyOf": [{"const": "[DONE]"}, json_event]}},
            "required": ["data"],
        }
    }


def _request(schemas: dict[str, Any], model: type[GenerationRequest]) -> None:
    request = schemas.get(model.__name__)
    if not request:
        return
    properties = request.setdefault("properties", {})
    for name in sorted(model.IGNORED_FIELDS):
        properties.setdefault(
            name, {"description": "Accepted and ignored (no meaning here).", "deprecated": True}
        )
    _object_branch(properties.get("logit_bias", {}))["propertyNames"] = {"pattern": "^[0-9]+$"}
    stop = {"type": "string", "minLength": 1, "maxLength": 256}
    properties["stop"] = {
        "anyOf": [stop, {"type": "array", "items": stop, "maxItems": 4}, {"type": "null"}],
        "description": properties.get("stop", {}).get("description", ""),
    }


def _chat_rules(schemas: dict[str, Any]) -> None:
    if "ChatCompletionRequest" in schemas:
        properties = schemas["ChatCompletionRequest"]["properties"]
        properties["messages"]["maxItems"] = MAX_MESSAGES
        _array_branch(properties["tools"])["maxItems"] = MAX_TOOLS
    if "FunctionDefinition" in schemas:
        name = schemas["FunctionDefinition"]["properties"]["name"]
        name["pattern"] = TOOL_NAME.pattern
    if "ResponseFormat" in schemas:
        schemas["ResponseFormat"]["anyOf"] = [
            {"properties": {"type": {"enum": ["text", "json_object"]}}},
            {
                "properties": {"type": {"const": "json_schema"}, "json_schema": {"type": "object"}},
                "required": ["json_schema"],
            },
        ]


def _completion_rules(schemas: dict[str, Any]) -> None:
    """What ``CompletionRequest``'s validators require of the prompt and the refused fields
    (``best_of`` equal to ``n`` is said in its description only)."""
    request = schemas.get("CompletionRequest")
    if not request:
        return
    properties = request["properties"]
    ids = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
    properties["prompt"] = {
        "anyOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ids,
            {"type": "array", "items": ids, "minItems": 1},
        ],
        "description": properties["prompt"].get("description", ""),
    }
    properties["suffix"] = {
        "anyOf": [{"type": "null"}, {"const": ""}],
        "description": properties["suffix"].get("description", ""),
    }
    properties["grammar_root"] = {
        "type": "null",
        "description": properties["grammar_root"].get("description", ""),
    }


def _array_branch(schema: dict[str, Any]) -> dict[str, Any]:
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "array":
            return branch
    return {}


def _object_branch(schema: dict[str, Any]) -> dict[str, Any]:
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "object":
            return branch
    return {}


def _messages(message: dict[str, Any]) -> None:
    """What ``ChatMessage``'s validator requires of each role, as alternatives."""
    not_null = {"not": {"type": "null"}}
    no_calls = {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}
    message["anyOf"] = [
        {
            "properties": {
                "role": {"enum": ["system", "developer", "user"]},
                "content": not_null,
                "tool_calls": no_calls,
            },
            "required": ["content"],
        },
        {
            "properties": {
                "role": {"const": "tool"},
                "content": not_null,
                "tool_calls": no_calls,
                "tool_call_id": {"type": "string", "minLength": 1},
            },
            "required": ["content", "tool_call_id"],
        },
        {
            "properties": {"role": {"const": "assistant"}, "content": not_null},
            "required": ["content"],
        },
        {
            "properties": {
                "role": {"const": "assistant"},
                "tool_calls": {"type": "array", "minItems": 1},
            },
            "required": ["tool_calls"],
        },
    ]
