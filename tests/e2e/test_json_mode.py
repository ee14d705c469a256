"""JSON mode and JSON Schema outputs, enforced by constrained decoding, end to end."""

from __future__ import annotations

import json
import threading
import time

import cerebras.cloud.sdk
import jsonschema
import openai
import pytest
from cerebras.cloud.sdk import Cerebras

pytestmark = pytest.mark.e2e

SMOL = "smollm2-135m"
TINY = "llama3.1-tiny"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"enum": [18, 30, 45, 60, 75]},
        "languages": {"type": "array", "items": {"type": "string", "maxLength": 15},
                      "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}  # fmt: skip
PROMPTS = [
    "Describe a cat as a JSON object.",
    "Give me a JSON object with the capital of France.",
    "Return JSON with keys a and b holding numbers.",
    "List three colors in a JSON object.",
    "Reply in JSON: what is 2+2?",
    "A JSON object describing a book.",
    "JSON object with your name.",
    "Output a JSON object about the weather.",
]


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You answer only in JSON."},
            {"role": "user", "content": text}]  # fmt: skip


@pytest.fixture(scope="module")
def smol(smol_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{smol_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def tiny(tiny_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tiny_url}/v1", api_key="unused", max_retries=0)


def test_json_object_always_parses(smol: openai.OpenAI) -> None:
    failed = 0
    for i, prompt in enumerate(PROMPTS):
        try:
            r = smol.chat.completions.create(
                model=SMOL, messages=ask(prompt), max_tokens=512, seed=i,
                response_format={"type": "json_object"},
            )  # fmt: skip
        except openai.BadRequestError as err:
            # Truncation is the one allowed failure, and it is reported, never returned.
            assert err.body["code"] == "json_validate_failed"
            failed += 1
            continue
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    assert failed <= 1, f"{failed} of {len(PROMPTS)} ran out of tokens"


@pytest.mark.parametrize(("url_fixture", "model"), [("smol_url", SMOL), ("tiny_url", TINY)])
def test_json_schema_outputs_validate(request: pytest.FixtureRequest, url_fixture: str,
                                      model: str) -> None:  # fmt: skip
    url = request.getfixturevalue(url_fixture)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                   "strict": True}}  # fmt: skip
    for seed in range(4):
        r = client.chat.completions.create(
            model=model, messages=ask("Invent a person."), max_tokens=150, seed=seed,
            temperature=1.0, response_format=fmt,
        )  # fmt: skip
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


# No object that holds a "description" fits in 3 tokens: the answer must be cut short.
NEEDS_ROOM = {"type": "json_schema", "json_schema": {"name": "cat", "schema": {
    "type": "object", "properties": {"description": {"type": "string"}},
    "required": ["description"]}}}  # fmt: skip


def test_truncated_json_is_400_with_failed_generation(smol: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        smol.chat.completions.create(
            model=SMOL, messages=ask("Describe a cat in detail."), max_tokens=3,
            response_format=NEEDS_ROOM,
        )  # fmt: skip
    body = err.value.body
    assert err.value.status_code == 400
    assert body["code"] == "json_validate_failed" and body["param"] == "response_format"
    assert body["type"] == "invalid_request_error"
    assert body["failed_generation"].startswith("{")


def test_cerebras_sdk_sees_failed_generation(smol_url: str) -> None:
    client = Cerebras(base_url=smol_url, api_key="unused", max_retries=0)
    with pytest.raises(cerebras.cloud.sdk.BadRequestError) as err:
        client.chat.completions.create(
            model=SMOL, messages=ask("A cat."), max_tokens=2, response_format=NEEDS_ROOM,
        )  # fmt: skip
    assert "failed_generation" in err.value.body


def test_json_mode_with_stream_is_400(smol: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        smol.chat.completions.create(
            model=SMOL, messages=ask("A cat."), stream=True,
            response_format={"type": "json_object"},
        )  # fmt: skip
    assert err.value.body["param"] == "stream"
    assert "response_format" in err.value.body["message"]


def test_invalid_schema_is_400(smol: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        smol.chat.completions.create(
            model=SMOL, messages=ask("x"),
            response_format={"type": "json_schema",
                             "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        )  # fmt: skip
    assert err.value.body["param"] == "response_format"


def plain_seconds(smol: openai.OpenAI) -> float:
    """The time of a short request, checked to be answered in full."""
    started = time.monotonic()
    r = smol.chat.completions.create(
        model=SMOL, messages=ask("hi"), max_tokens=8, extra_body={"ignore_eos": True}
    )
    seconds = time.monotonic() - started
    assert r.choices[0].message.content and r.usage.completion_tokens == 8
    return seconds


def test_pathological_schema_is_400_fast_and_others_still_served(smol: openai.OpenAI) -> None:
    """The schema compiles in the grammar worker until the --grammar-timeout (10 s), then is a
    400; meanwhile short requests are answered at their usual speed: the compile blocks
    neither the event loop nor the engine."""
    # A pattern whose automaton needs about 2**20 states: it cannot compile within the bound.
    evil = {"type": "object", "properties": {"x": {"type": "string", "pattern": "[ab]*a[ab]{20}"}},
            "required": ["x"]}  # fmt: skip
    usual = min(plain_seconds(smol) for _ in range(3))
    outcome: dict[str, object] = {}

    def evil_request() -> None:
        started = time.monotonic()
        try:
            smol.chat.completions.create(
                model=SMOL, messages=ask("x"), max_tokens=50,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "e", "schema": evil}},
            )  # fmt: skip
        except openai.BadRequestError as err:
            outcome["error"] = err.body
        outcome["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=evil_request)
    worker.start()
    during = [plain_seconds(smol)]
    while worker.is_alive():
        during.append(plain_seconds(smol))
    worker.join()
    elapsed = float(str(outcome["seconds"]))
    print(f"\npathological schema: 400 after {elapsed:.1f} s; {len(during)} short requests "
          f"meanwhile, slowest {max(during):.2f} s (usually {usual:.2f} s)")  # fmt: skip
    assert isinstance(outcome.get("error"), dict), outcome
    assert outcome["error"]["param"] == "response_format"
    assert elapsed < 60, f"took {elapsed:.0f} s"
    # Served throughout the compile, each at most three times the usual time (two shared
    # cores: the compile itself takes one); a blocked loop would hold each for the compile.
    assert len(during) >= 2, (during, elapsed)
    assert max(during) < 3 * usual + 1, (usual, during, elapsed)


def test_schema_feature_the_backend_cannot_enforce_is_400(smol: openai.OpenAI) -> None:
    # outlines_core would silently drop "minimum": refused rather than half-enforced.
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 5}}}
    with pytest.raises(openai.BadRequestError) as err:
        smol.chat.completions.create(
            model=SMOL, messages=ask("x"), max_tokens=20,
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        )  # fmt: skip
    assert err.value.body["param"] == "response_format"
    assert "minimum" in err.value.body["message"]
