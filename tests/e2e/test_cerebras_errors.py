"""The cerebras-cloud-sdk raises the exception class it raises against Cerebras for each error
the real server sends (it picks the class from ``status_code`` in the body, then the HTTP
status), as a response or as a stream's error event; every such body is OpenAI's
``ErrorResponse``; a client pinned with ``X-Cerebras-Version-Patch`` is served.

A guarded server: smollm2-135m with two sequences and no queue (two slots), an API key and a
64 KiB body limit, so that 401, 413 and 429 are cheap to provoke. Its request timeout is the
default ten minutes: the 429 test's held streams must hold their slots for as long as the test
process takes to send the third request, and nothing but the timeout ends one early (at a
10 s timeout, then 30 s, CI runs served the third request: the test process had stalled that
long). The deadline's 504 is tested with a server of its own, in tests/e2e/test_deadline.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cerebras.cloud.sdk import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    Cerebras,
    NotFoundError,
    RateLimitError,
)

from tests.support.cerebras_sdk import raised
from tests.support.closing import Closing
from tests.support.probes import gauge, wait_until
from tests.support.serverproc import ServerProcess, preset_file, start_server
from tests.support.sse import next_event

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
KEY = "sk-e2e-cerebras-errors-41d7"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMITTED = f'model_name="{MODEL}"'
MAX_BODY = 64 * 1024
HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("cerebras-errors")
    model_file = preset_file(folder, MODEL, max_num_seqs=2)
    env = {
        "LLAMA_SERVE_API_KEY": KEY,
        "LLAMA_SERVE_MAX_WAITING_REQUESTS": "0",
        "LLAMA_SERVE_MAX_REQUEST_BYTES": str(MAX_BODY),
    }
    server = start_server("--model", str(model_file), log_dir=folder, env=env)
    yield server
    assert server.stop() == 0


def client(server: ServerProcess, key: str = KEY, **options: Any) -> Cerebras:
    return Cerebras(base_url=server.base_url, api_key=key, max_retries=0, **options)


def create(sdk: Cerebras, **fields: Any) -> Callable[[], Any]:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 8} | fields
    return lambda: sdk.chat.completions.create(**body)


CASES: list[tuple[str, type[APIStatusError], int, dict[str, Any]]] = [
    ("bad_parameter", BadRequestError, 400, {"temperature": 5}),
    ("unknown_model", NotFoundError, 404, {"model": "no-such-model"}),
    (
        "json_mode_stream",
        BadRequestError,
        400,
        {"response_format": {"type": "json_object"}, "stream": True},
    ),
    ("too_large", APIStatusError, 413, {"messages": [{"role": "user", "content": "x" * MAX_BODY}]}),
    # A named call cut off by max_tokens: a 400 as an event, after the stream began.
    (
        "failed_mid_stream",
        BadRequestError,
        400,
        {
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 4,
            "stream": True,
        },
    ),
]


@pytest.mark.parametrize(("name", "kind", "status", "fields"), CASES, ids=[c[0] for c in CASES])
def test_sdk_raises_the_class_of_the_status(
    guarded: ServerProcess,
    name: str,
    kind: type[APIStatusError],
    status: int,
    fields: dict[str, Any],
    closing: Closing,
) -> None:
    error = raised(create(closing(client(guarded)), **fields))
    # The SDK has no class of its own for 413: the base class, as against Cerebras.
    assert type(error) is kind and error.status_code == status
    # A stream's error comes with HTTP 200: the class can only come from the body's status_code.
    assert error.response.status_code == (200 if name == "failed_mid_stream" else status)


def test_wrong_key_is_authentication_error(guarded: ServerProcess, closing: Closing) -> None:
    wrong = closing(client(guarded, key="sk-wrong"))
    error = raised(create(wrong))
    assert type(error) is AuthenticationError and error.status_code == 401
    assert type(raised(wrong.models.list)) is AuthenticationError


@contextlib.contextmanager
def holding_every_slot(url: str) -> Iterator[list[Iterator[str]]]:
    """Two long streams, each admitted (its first event read), held open until the block ends;
    leaving closes them, which aborts them in the engine. Yields their lines."""
    body = {
        "model": MODEL,
        "messages": HELLO,
        "stream": True,
        "max_tokens": 4000,
        "ignore_eos": True,
    }
    with contextlib.ExitStack() as stack:
        readers = []  # referenced: a reader collected early would close its stream
        for _ in range(2):
            r = stack.enter_context(
                httpx.stream(
                    "POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60
                )
            )
            assert r.status_code == 200
            readers.append(r.iter_lines())
            next(readers[-1])
        yield readers


def test_queue_full_is_rate_limit_error(guarded: ServerProcess, closing: Closing) -> None:
    sdk = closing(client(guarded))
    with holding_every_slot(guarded.base_url) as held:
        error = raised(create(sdk))
        # Both slots were still held: each stream goes on with chunks, not an error.
        for lines in held:
            assert "error" not in next_event(lines)
    assert type(error) is RateLimitError and error.status_code == 429
    assert error.response.headers["retry-after"] == "1"
    # The slots are free again once the server saw both clients go (a moment after they closed
    # their streams, longer on a loaded machine), and a request is served.
    wait_until(
        lambda: gauge(guarded.base_url, "llama_serve_admitted_requests", ADMITTED, AUTH) == 0,
        30,
        "both held slots released",
    )
    assert create(sdk)().choices[0].message.content


def test_a_client_pinned_to_a_version_patch_is_served(
    guarded: ServerProcess, closing: Closing
) -> None:
    pinned = closing(client(guarded, default_headers={"X-Cerebras-Version-Patch": "2"}))
    answer = pinned.chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, max_tokens=8, extra_headers={"x-request-id": "pinned-1"}
    )
    assert answer.parse().choices[0].message.content
    chunks = list(
        pinned.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, stream=True)
    )
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert guarded.access_line("pinned-1")["version_patch"] == "2"
    assert pinned.models.retrieve(MODEL).id == MODEL
