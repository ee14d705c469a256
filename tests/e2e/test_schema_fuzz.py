"""Schema fuzzing: schemathesis drives the server from its own ``/openapi.json``.

Every operation gets generated requests, valid and invalid by the document (schemathesis 4
"positive" and "negative" modes). Every answer must be no 5xx, a documented status with a
documented content type, and a body that matches its documented schema; invalid requests must
be refused. Generation is kept cheap: ``max_tokens`` and ``n`` are capped before sending (only
when valid, so an invalid request stays invalid). ``FUZZ_EXAMPLES`` sets the examples per
operation and mode (default 40); generation is derandomized, the same cases every run.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.reliability_options import size
from tests.support.stats import record

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

EXAMPLES = size("fuzz-examples")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
MAX_TOKENS, MAX_N = 8, 2
CAPS = (
    ("max_tokens", MAX_TOKENS, 2**62),
    ("max_completion_tokens", MAX_TOKENS, 2**62),
    ("n", MAX_N, 8),
)
"""(field, cap, largest valid value): values in 1..largest are capped."""


def _document() -> dict[str, Any]:
    """The server's document, built without starting it (the same code serves it: checked by
    ``test_served_document_is_the_fuzzed_one``), so that operations are known at collection."""
    from server.app import create_app

    return create_app(lambda: None).openapi()


# schemathesis.pytest.from_fixture (a lazily loaded schema) fails under pytest 9, which no
# longer has Function._nodeid; a schema known at collection time avoids that code path.
schema = schemathesis.openapi.from_dict(_document())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES
)


def cheapen(body: Any) -> None:
    """Make a generated body cheap and likely to reach the engine, never changing whether it
    is valid by the document: cap valid ``max_tokens``, ``max_completion_tokens`` and ``n``;
    name the served model (any string is valid by the document; unknown models get 404, see
    test_hostile); end a conversation that ends with an assistant turn with a user turn (a
    rule JSON Schema cannot state)."""
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = "smollm2-135m"
    for key, cap in (
        ("max_tokens", MAX_TOKENS),
        ("max_completion_tokens", MAX_TOKENS),
        ("n", MAX_N),
    ):
        value = body.get(key)
        if _whole(value) and 1 <= value <= (8 if key == "n" else 2**62):
            body[key] = min(int(value), cap)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_TOKENS  # absent or null means "the rest of the context"
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        messages.append({"role": "user", "content": "Go on."})


def _whole(value: Any) -> bool:
    """An integer as JSON Schema sees it (2.0 is one; True is not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == int(value)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_matches_the_document(case: Any, smol_url: str) -> None:
    cheapen(case.body)
    response = case.call(base_url=smol_url, timeout=120)
    served = response.status_code < 500
    status = {f"status_{response.status_code}": 1}
    record("schema_fuzz", cases=1, requests_sent=1, requests_served=int(served), **status)
    case.validate_response(response, checks=CHECKS)


def test_served_document_is_the_fuzzed_one(smol_url: str) -> None:
    assert httpx.get(f"{smol_url}/openapi.json", timeout=10).json() == _document()


def test_server_is_healthy_after_fuzzing(smol_url: str) -> None:
    assert httpx.get(f"{smol_url}/health", timeout=10).status_code == 200
