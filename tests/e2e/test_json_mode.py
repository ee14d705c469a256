"""JSON mode and JSON Schema outputs, enforced by constrained decoding, end to end, on the
default backend (llguidance) and on Outlines."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator

import cerebras.cloud.sdk
import jsonschema
import openai
import pytest
from cerebras.cloud.sdk import Cerebras

from benchmarks import schema_e2e
from tests.conftest import STRUCTURED_BACKENDS, backend_server, backend_url
from tests.support.closing import Closing
from tests.support.probes import short_request
from tests.support.serverproc import ServerProcess

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


@pytest.fixture(scope="module", params=STRUCTURED_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def smol_url(request: pytest.FixtureRequest, backend: str) -> str:
    return backend_url(request, "smol", backend)


@pytest.fixture(scope="module")
def smol_process(request: pytest.FixtureRequest, backend: str) -> ServerProcess:
    return backend_server(request, "smol", backend)


@pytest.fixture(scope="module")
def tiny_url(request: pytest.FixtureRequest, backend: str) -> str:
    return backend_url(request, "tiny", backend)


@pytest.fixture(scope="module")
def smol(smol_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{smol_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def tiny(tiny_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{tiny_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


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
    # SmolLM2 at temperature 1 sometimes writes one string until max_tokens (2 of these 8 on
    # llguidance, whose JSON mode nests freely; at most 1 on Outlines' two-level regex).
    assert failed <= 2, f"{failed} of {len(PROMPTS)} ran out of tokens"


@pytest.mark.parametrize(("url_fixture", "model"), [("smol_url", SMOL), ("tiny_url", TINY)])
def test_json_schema_outputs_validate(request: pytest.FixtureRequest, url_fixture: str,
                                      model: str, backend: str,
                                      closing: Closing) -> None:  # fmt: skip
    url = request.getfixturevalue(url_fixture)
    client = closing(openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0))
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


def test_cerebras_sdk_sees_failed_generation(smol_url: str, closing: Closing) -> None:
    client = closing(Cerebras(base_url=smol_url, api_key="unused", max_retries=0))
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


def plain_seconds(server: ServerProcess) -> float:
    """The server's time for a short request, checked to be answered in full."""
    r, seconds = short_request(server, SMOL)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] == 8
    return seconds


def test_pathological_schema_is_400_fast_and_others_still_served(
    smol: openai.OpenAI, smol_process: ServerProcess, backend: str
) -> None:
    """A pattern whose automaton needs about 2**20 states: Outlines cannot compile it within
    the bound (a 400 after --grammar-timeout); llguidance builds its lexer lazily under its own
    fuel limits and may serve it. Meanwhile short requests go on being answered in full."""
    evil = {"type": "object", "properties": {"x": {"type": "string", "pattern": "[ab]*a[ab]{20}"}},
            "required": ["x"]}  # fmt: skip
    usual = min(plain_seconds(smol_process) for _ in range(3))
    outcome: dict[str, object] = {}

    evil_id = f"evil-{uuid.uuid4().hex[:12]}"

    def evil_request() -> None:
        evil_format = {"type": "json_schema", "json_schema": {"name": "e", "schema": evil}}
        try:
            r = smol.chat.completions.create(
                model=SMOL,
                messages=ask("x"),
                max_tokens=50,
                response_format=evil_format,
                extra_headers={"x-request-id": evil_id},
            )
            outcome["content"] = r.choices[0].message.content
        except openai.BadRequestError as err:
            outcome["error"] = err.body

    worker = threading.Thread(target=evil_request)
    worker.start()
    during = [plain_seconds(smol_process)]
    while worker.is_alive():
        during.append(plain_seconds(smol_process))
    worker.join()
    elapsed = smol_process.seconds(evil_id)  # by the server's clock: this process may stall
    slowest = max(during)
    print(f"\npathological schema ({backend}): answered after {elapsed:.1f} s; {len(during)} "
          f"short requests meanwhile, slowest {slowest:.2f} s (usually {usual:.2f} s)")  # fmt: skip
    error = outcome.get("error")
    if isinstance(error, dict):
        assert error["param"] == "response_format"
    else:
        assert backend != "outlines", "Outlines compiled a 2**20-state automaton"
        jsonschema.validate(json.loads(str(outcome["content"])), evil)
    assert elapsed < 60, f"took {elapsed:.0f} s"
    # Every short request meanwhile was answered in full (plain_seconds checks it), none held
    # for the whole compile. Not "at its usual speed": on a machine shared with other vLLM
    # engines one took 18.6 s against a usual 0.4 s during the first Outlines compile after
    # start, by the test's clock then (which stalls beside busy engines; README, Development).
    assert slowest < 60, (usual, during, elapsed)


UNENFORCED = {"outlines": ("minimum", {"type": "integer", "minimum": 5}),
              "guidance": ("uniqueItems", {"type": "array", "uniqueItems": True})}  # fmt: skip


def test_schema_feature_the_backend_cannot_enforce_is_400(
    smol: openai.OpenAI, backend: str
) -> None:
    # A keyword the backend would drop (outlines_core: minimum) or does not implement
    # (llguidance: uniqueItems) is refused, naming it, rather than half-enforced.
    keyword, value = UNENFORCED[backend]
    schema = {"type": "object", "properties": {"n": value}}
    with pytest.raises(openai.BadRequestError) as err:
        smol.chat.completions.create(
            model=SMOL, messages=ask("x"), max_tokens=20,
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        )  # fmt: skip
    assert err.value.body["param"] == "response_format"
    assert keyword in err.value.body["message"]


BOUNDED = {"type": "object", "properties": {
    "month": {"type": "integer", "minimum": 1, "maximum": 12},
    "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
    "tags": {"type": "array", "items": {"type": "string", "minLength": 2, "maxLength": 8},
             "minItems": 1, "maxItems": 3},
    "kind": {"anyOf": [{"const": "a"}, {"enum": ["b", "c"]}]}},
    "required": ["month", "code", "tags", "kind"]}  # fmt: skip


def test_numeric_bounds_lengths_patterns_are_enforced(smol: openai.OpenAI, backend: str) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "b", "schema": BOUNDED}}
    if backend == "outlines":
        with pytest.raises(openai.BadRequestError) as err:
            smol.chat.completions.create(
                model=SMOL, messages=ask("x"), max_tokens=80, response_format=fmt
            )
        assert "minimum" in err.value.body["message"]
        return
    for seed in range(3):
        r = smol.chat.completions.create(
            model=SMOL, messages=ask("A booking."), max_tokens=120, seed=seed,
            temperature=1.0, response_format=fmt,
        )  # fmt: skip
        jsonschema.validate(json.loads(r.choices[0].message.content), BOUNDED)


def deepest_bracket(text: str) -> int:
    """How deep objects and arrays nest in JSON ``text``, complete or cut off."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif in_string:
            escaped, in_string = char == "\\", char != '"'
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "}]":
            depth -= 1
    return deepest


def test_json_mode_nests_six_levels_when_asked(smol: openai.OpenAI, backend: str) -> None:
    """llguidance nests as deep as asked; Outlines' JSON-mode regex (its regex for ``{"type":
    "object"}``) nests at most two levels below the top object, as the README says: the
    answer is still a JSON object, cut to that depth."""
    six = {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "properties": {
                    "b": {
                        "type": "object",
                        "properties": {
                            "c": {
                                "type": "object",
                                "properties": {
                                    "d": {
                                        "type": "object",
                                        "properties": {
                                            "e": {
                                                "type": "object",
                                                "properties": {"f": {"type": "integer"}},
                                                "required": ["f"],
                                            }
                                        },
                                        "required": ["e"],
                                    }
                                },
                                "required": ["d"],
                            }
                        },
                        "required": ["c"],
                    }
                },
                "required": ["b"],
            }
        },
        "required": ["a"],
    }
    # JSON mode itself: the schema only checks the answer, the prompt shows the shape.
    request = dict(
        model=SMOL, max_tokens=120, temperature=0, response_format={"type": "json_object"},
        messages=ask('Copy this JSON exactly: {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}'),
    )  # fmt: skip
    if backend == "outlines":
        # Where the fourth level would open, the grammar allows only a scalar: the copy goes on
        # as a string (here until max_tokens, so a 400 with failed_generation) or a number.
        try:
            text = smol.chat.completions.create(**request).choices[0].message.content or ""  # type: ignore[call-overload]
        except openai.BadRequestError as err:
            error = err.body
            assert isinstance(error, dict) and error["code"] == "json_validate_failed", error
            text = error["failed_generation"]
        assert text.startswith("{") and deepest_bracket(text) <= 3, text
        return
    r = smol.chat.completions.create(**request)  # type: ignore[call-overload]
    answer = json.loads(r.choices[0].message.content)
    jsonschema.validate(answer, six)


CALENDAR = {
    "properties": {
        "date": {"description": "The date of the event", "format": "date", "type": "string"},
        "end_time": {"description": "The end time of the event", "format": "time",
                     "type": "string"},
        "location": {"description": "The location of the event", "type": "string"},
        "start_time": {"description": "The start time of the event", "format": "time",
                       "type": "string"},
        "title": {"description": "The title of the event", "type": "string"},
    },
    "required": ["title", "date", "start_time", "end_time", "location"],
    "type": "object",
}  # fmt: skip
"""JSONSchemaBench's Glaiveai2K ``create_calendar_event``: asked as the schema benchmark asks,
smollm2 writes ``"20:00:00.000...`` until ``max_tokens`` where the seconds' fraction is not
bounded."""


def test_time_fractions_are_bounded_on_the_default_backend(
    smol: openai.OpenAI, backend: str
) -> None:
    """llguidance: at most 9 digits after the seconds' point (README), so the object closes."""
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": CALENDAR}}
    request = dict(model=SMOL, max_tokens=512, temperature=0, seed=0, response_format=fmt,
                   messages=schema_e2e.messages(CALENDAR))  # fmt: skip
    if backend == "outlines":
        # Not bounded there: the promise still holds (valid JSON or a 400 with the text).
        try:
            r = smol.chat.completions.create(**request)  # type: ignore[call-overload]
        except openai.BadRequestError as err:
            assert isinstance(err.body, dict) and err.body["code"] == "json_validate_failed"
            return
        jsonschema.validate(json.loads(r.choices[0].message.content), CALENDAR)
        return
    r = smol.chat.completions.create(**request)  # type: ignore[call-overload]
    answer = json.loads(r.choices[0].message.content)
    jsonschema.validate(answer, CALENDAR)
    for key in ("start_time", "end_time"):
        fraction = re.search(r"(?:\.([0-9]*))?[zZ+-][0-9:]*$", answer[key])
        assert fraction and len(fraction.group(1) or "") <= 9, answer[key]
