"""The OpenAPI document describes the real bodies: errors, the event stream, health (no engine)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from server.app import create_app
from server.errors import (
    BadRequestError,
    ContentTooLargeError,
    FailedGenerationError,
    HeadersTooLargeError,
)

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return create_app(lambda: None).openapi()


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with the document's components reachable, for jsonschema."""
    return {**schema, "components": doc["components"]}


def test_every_operation_documents_its_errors(doc: dict[str, Any]) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        answers = doc["paths"][path]["post"]["responses"]
        assert {"400", "404", "408", "413", "429", "431", "500", "503", "504"} <= set(answers)
        assert "422" not in answers
    assert "404" in doc["paths"]["/v1/models/{model_id}"]["get"]["responses"]
    assert "503" in doc["paths"]["/health"]["get"]["responses"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("bad", param="temperature"),
        ContentTooLargeError("big"),
        HeadersTooLargeError("big"),
        FailedGenerationError("not json", failed_generation="{", param="response_format"),
    ],
)
def test_error_envelope_schema_accepts_real_errors(doc: dict[str, Any], error: Any) -> None:
    schema = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["400"]["content"]
    ref = schema["application/json"]["schema"]
    jsonschema.validate(error.body(), _resolve(doc, ref))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"detail": "FastAPI's shape"}, _resolve(doc, ref))


@pytest.mark.parametrize(
    ("path", "chunk"),
    [("/v1/chat/completions", "ChatCompletionChunk"), ("/v1/completions", "CompletionResponse")],
)
def test_stream_is_documented_as_event_stream(doc: dict[str, Any], path: str, chunk: str) -> None:
    ok = doc["paths"][path]["post"]["responses"]["200"]["content"]
    assert set(ok) == {"application/json", "text/event-stream"}
    event = ok["text/event-stream"]["schema"]["properties"]["data"]["anyOf"][1]
    assert event["contentSchema"]["anyOf"][0] == {"$ref": f"#/components/schemas/{chunk}"}
    assert chunk in doc["components"]["schemas"]


def test_completion_prompt_rules_are_documented(doc: dict[str, Any]) -> None:
    """What the validators refuse is what the document calls invalid, so the schema fuzzer's
    invalid requests are refused and its valid ones are not refused for their shape."""
    request = _resolve(doc, {"$ref": "#/components/schemas/CompletionRequest"})
    valid = [{"prompt": "hi"}, {"prompt": ["a", "b"]}, {"prompt": [1, 2]}, {"prompt": [[1], [2]]}]
    for body in valid:
        jsonschema.validate({"model": "m", **body}, request)
    invalid = [
        {"prompt": []},
        {"prompt": [[]]},
        {"prompt": [-1]},
        {"prompt": "x", "suffix": "y"},
        {"prompt": "x", "grammar_root": "root"},
        {"prompt": "x", "logprobs": 21},
    ]
    for body in invalid:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"model": "m", **body}, request)


def test_health_body_is_documented(doc: dict[str, Any]) -> None:
    ok = doc["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]
    jsonschema.validate({"status": "ok", "models": ["m"]}, _resolve(doc, ok["schema"]))


def test_ignored_fields_are_documented(doc: dict[str, Any]) -> None:
    request = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert request["properties"]["store"]["deprecated"] is True
    assert request.get("additionalProperties") is False
    assert "deprecated" not in request["properties"]["service_tier"]  # a real field now
    completion = doc["components"]["schemas"]["CompletionRequest"]
    assert "deprecated" not in completion["properties"]["service_tier"]
    assert completion.get("additionalProperties") is False


def test_schemathesis_loads_the_document(doc: dict[str, Any]) -> None:
    import schemathesis

    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()
    operations = {f"{r.ok().method.upper()} {r.ok().path}" for r in schema.get_all_operations()}
    assert {"POST /v1/chat/completions", "POST /v1/completions"} <= operations
