"""Production operation on one real server: API keys on every route, /metrics counts, the
queue bound (429 + Retry-After), rate-limit headers, the access log. (The request deadline has
a server of its own: tests/e2e/test_deadline.py.)

One server for the module: smollm2-135m with max_num_seqs 2 and max_waiting_requests 2 (four
slots), two API keys (environment and file).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import openai
import pytest
from cerebras.cloud.sdk import Cerebras
from prometheus_client.parser import text_string_to_metric_families

from tests.support.closing import Closing
from tests.support.path_spellings import PATH_SPELLINGS
from tests.support.probes import wait_until
from tests.support.serverproc import ServerProcess, preset_file, start_server
from tests.support.sse import sse_data
from tests.support.timing import assert_measured_time_info

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
KEY = "sk-e2e-env-6f1c2b"
FILE_KEY = "sk-e2e-file-93ad0e"
AUTH = {"Authorization": f"Bearer {KEY}"}
SLOTS = 4  # max_num_seqs 2 + max_waiting_requests 2
RUNNING_TOKENS, QUEUED_TOKENS = 4000, 32
"""Of the streams that hold the slots while the queue bound is tested: the two that run first
hold theirs until the test closes them (minutes of generation: a stalled test process, which CI
saw, must not find them ended, as the server buffers a stream whole and frees its slot without
its client reading it); the two queued behind them then run whole."""
HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("guarded")
    model_file = preset_file(folder, MODEL, max_num_seqs=2)
    key_file = folder / "keys.txt"
    key_file.write_text(f"# e2e\n{FILE_KEY}\n")
    env = {
        "LLAMA_SERVE_API_KEY": KEY,
        "LLAMA_SERVE_API_KEY_FILE": str(key_file),
        "LLAMA_SERVE_MAX_WAITING_REQUESTS": "2",
        "LLAMA_SERVE_RATE_LIMIT_REQUESTS_PER_DAY": "100000",
    }
    server = start_server("--model", str(model_file), log_dir=folder, env=env)
    yield server
    assert server.stop() == 0


def chat(url: str, headers: dict[str, str] = AUTH, **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "messages": HELLO, "max_tokens": 8} | body
    return httpx.post(f"{url}/v1/chat/completions", json=payload, headers=headers, timeout=60)


Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    text = httpx.get(f"{url}/metrics", headers=AUTH, timeout=30).text
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the series with these labels (vLLM adds ``engine``)."""
    return sum(v for n, have, v in samples if n == name and labels.items() <= have.items())


# ------------------------------------------------------------------ API keys

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SPELLINGS = [
    *PATH_SPELLINGS,
    "/./health",
    "/health;x",
    "/v1/chat/completions?stream=true",
    "*",
]


def served_paths(url: str) -> list[str]:
    spec = httpx.get(f"{url}/openapi.json", headers=AUTH, timeout=30).json()
    paths = [re.sub(r"\{[^}]+\}", MODEL, p) for p in spec["paths"]]
    assert "/v1/chat/completions" in paths
    return paths


def raw_status(port: int, method: str, target: str, headers: dict[str, str]) -> int:
    """Send ``target`` byte for byte (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, target, headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status == 401 and method != "HEAD":
            assert json.loads(body)["error"]["type"] == "authentication_error"
        return response.status
    finally:
        conn.close()


def test_every_route_spelling_and_method_needs_a_key(guarded: ServerProcess) -> None:
    targets = sorted(set(served_paths(guarded.base_url)) | set(SPELLINGS))
    slipped = []
    for target in targets:
        path = unquote(target.partition("?")[0])
        for method in METHODS:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                exempt = path == "/health" and method == "GET"
                status = raw_status(guarded.port, method, target, headers)
                if (status == 401) == exempt:
                    slipped.append((method, target, headers, status))
    assert slipped == []


def test_with_a_key_the_answers_match_an_open_server(
    guarded: ServerProcess, smol_url: str, closing: Closing
) -> None:
    def sdk(url: str, key: str) -> openai.OpenAI:
        return closing(openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0))

    keyed, open_ = sdk(guarded.base_url, KEY), sdk(smol_url, "unused")
    ask = {"model": MODEL, "messages": HELLO, "max_tokens": 24, "temperature": 0}
    a, b = keyed.chat.completions.create(**ask), open_.chat.completions.create(**ask)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage == b.usage and a.choices[0].finish_reason == b.choices[0].finish_reason
    streamed = keyed.chat.completions.create(**ask, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == a.choices[0].message.content
    assert [m.id for m in keyed.models.list()] == [MODEL]
    file_keyed = sdk(guarded.base_url, FILE_KEY)
    assert file_keyed.chat.completions.create(**ask).choices[0].message.content == text
    cerebras = closing(Cerebras(base_url=guarded.base_url, api_key=KEY, max_retries=0))
    assert cerebras.chat.completions.create(**ask).choices[0].message.content == text
    wrong = sdk(guarded.base_url, "nope")
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.chat.completions.create(**ask)
    assert refused.value.status_code == 401


# ------------------------------------------------------------------ metrics


def test_metrics_count_the_requests_sent(guarded: ServerProcess) -> None:
    url, n, tokens = guarded.base_url, 5, 6
    before = scrape(url)
    usages = []
    for i in range(n):
        r = chat(url, max_tokens=tokens, ignore_eos=True, temperature=0, seed=i)
        assert r.status_code == 200
        usages.append(r.json()["usage"])
    for _ in range(3):
        assert chat(url, headers={}).status_code == 401
    for _ in range(2):
        assert chat(url, temperature=9).status_code == 400
    want_prompt = sum(u["prompt_tokens"] for u in usages)

    def delta(after: Samples, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    m, rejected = {"model_name": MODEL}, "llama_serve_rejected_requests_total"
    deadline, scrapes = time.monotonic() + 60, 0
    # vLLM's counters follow the engine's steps, and the server counts a response as its
    # handler ends, a moment after the client read it: give them a moment (more on a loaded
    # machine). Every counter only grows, so waiting cannot skip past the expected values.
    while True:
        after, scrapes = scrape(url), scrapes + 1
        engine = {
            "success": delta(after, "vllm:request_success_total", finished_reason="length", **m),
            "generation": delta(after, "vllm:generation_tokens_total", **m),
            "prompt": delta(after, "vllm:prompt_tokens_total", **m),
            "e2e": delta(after, "vllm:e2e_request_latency_seconds_count", **m),
            "ttft": delta(after, "vllm:time_to_first_token_seconds_count", **m),
        }
        want = {"success": n, "generation": n * tokens, "prompt": want_prompt, "e2e": n, "ttft": n}
        ours = {
            "200": delta(after, "llama_serve_http_responses_total", status="200"),
            "401": delta(after, "llama_serve_http_responses_total", status="401"),
            "400": delta(after, "llama_serve_http_responses_total", status="400"),
            "auth": delta(after, rejected, reason="auth"),
            "bad_request": delta(after, rejected, reason="bad_request"),
        }
        # 200s: the n answers plus the earlier scrapes (each counted once it was sent).
        want_ours = {"200": n + scrapes, "401": 3, "400": 2, "auth": 3, "bad_request": 2}
        if (engine, ours) == (want, want_ours) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert engine == want
    assert ours == want_ours
    assert value(after, "vllm:num_requests_running", **m) == 0
    assert value(after, "llama_serve_admitted_requests", model_name=MODEL) == 0
    inflight = [v for n, _, v in after if n == "llama_serve_inflight_requests"]
    assert inflight == [0]  # the scrape itself is a probe, not counted


# ------------------------------------------------------------------ overload


def _overloaded(url: str) -> float:
    """Requests refused so far because every slot was taken."""
    return value(scrape(url), "llama_serve_rejected_requests_total", reason="overloaded")


async def _hold_all_slots(url: str) -> tuple[list[list[Any]], httpx.Response, Any]:
    """Open SLOTS streams (each holds its slot until it ends), then ask once more, and once
    more through the OpenAI SDK; once both were refused, close the two running streams, so
    that the two queued ones run and the SDK's retry gets through. The queued streams' events,
    the refused answer and the SDK's."""
    refusals = _overloaded(url)
    body = {"model": MODEL, "messages": HELLO, "ignore_eos": True}
    tokens = [RUNNING_TOKENS] * 2 + [QUEUED_TOKENS] * (SLOTS - 2)
    async with (
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120) as client,
        contextlib.AsyncExitStack() as stack,
    ):
        streams = [
            await stack.enter_async_context(
                client.stream(
                    "POST", "/v1/chat/completions", json=body | {"stream": True, "max_tokens": n}
                )
            )
            for n in tokens
        ]
        assert [s.status_code for s in streams] == [200] * SLOTS
        refused = await client.post("/v1/chat/completions", json=body | {"max_tokens": 2})
        # The OpenAI SDK waits Retry-After and tries again: it gets through once the
        # streams end (a minute of retries: room for a slow machine to finish them).
        sdk = stack.enter_context(openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=60))
        retried = asyncio.create_task(
            asyncio.to_thread(
                sdk.chat.completions.create, model=MODEL, messages=HELLO, max_tokens=2
            )
        )
        # Closed only once the server refused the SDK's first try too (the running streams
        # hold their slots for minutes: however long this process takes to get here).
        await asyncio.to_thread(
            wait_until, lambda: _overloaded(url) >= refusals + 2, 60, "the SDK's first try refused"
        )
        for running in streams[:2]:  # closing aborts them: their slots are free
            await running.aclose()
        events = [sse_data([line async for line in s.aiter_lines()]) for s in streams[2:]]
        return events, refused, await retried


def test_queue_bound_gives_429_with_retry_after_and_loses_nothing_below_it(
    guarded: ServerProcess,
) -> None:
    events, refused, retried = asyncio.run(_hold_all_slots(guarded.base_url))
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    for stream in events:  # the queued requests, admitted below the bound, finished whole
        assert stream[-1] == "[DONE]"
        final = stream[-2]
        assert final["choices"][0]["finish_reason"] == "length"
        assert final["usage"]["completion_tokens"] == QUEUED_TOKENS
        assert "error" not in json.dumps(stream)
    assert retried is not None and retried.choices[0].message.content is not None


# ------------------------------------------------------------------ headers and logs


def test_rate_limit_headers_per_key(guarded: ServerProcess) -> None:
    first, second = chat(guarded.base_url), chat(guarded.base_url)
    other = chat(guarded.base_url, headers={"Authorization": f"Bearer {FILE_KEY}"})
    left = [int(r.headers["x-ratelimit-remaining-requests-day"]) for r in (first, second)]
    assert left[0] - left[1] == 1
    assert first.headers["x-ratelimit-limit-requests-day"] == "100000"
    assert 0 < float(first.headers["x-ratelimit-reset-requests-day"]) <= 86400
    assert int(other.headers["x-ratelimit-remaining-requests-day"]) > left[1]


def test_access_log_line_and_startup_logs(guarded: ServerProcess) -> None:
    sent_at = time.time()
    r = chat(guarded.base_url, headers=AUTH | {"x-request-id": "e2e-log-7"}, user="alice-42")
    received_at = time.time()
    assert r.headers["x-request-id"] == "e2e-log-7"
    line = guarded.access_line("e2e-log-7")
    assert line["logger"] == "server.access" and line["status"] == 200
    assert line["model"] == MODEL and line["user"] == "alice-42"
    assert line["id"] == r.json()["id"] and line["key_id"].startswith("key-")
    assert line["usage"] == r.json()["usage"]
    # The answer's own measurement, logged as sent (not a second, different clock reading).
    assert line["time_info"] == r.json()["time_info"]
    assert_measured_time_info(
        line["time_info"],
        completion_tokens=r.json()["usage"]["completion_tokens"],
        sent_at=sent_at,
        received_at=received_at,
        created=r.json()["created"],
    )
    assert "sea" not in json.dumps(line) and KEY not in guarded.log()  # no prompts, no keys
    starts = [json.loads(x) for x in guarded.log().splitlines() if x.startswith("{")]
    ready = next(x for x in starts if x["msg"] == "ready")
    assert ready["models"][0]["admission_limit"] == SLOTS and ready["seconds"] > 0
    # The startup heap (torch, vLLM, the tokenizer) is kept out of the collector's walks.
    assert ready["gc_frozen_objects"] > 100_000
    # vLLM's environment variables are read once, not at every generated token.
    assert ready["vllm_envs_cached"] is True
    engine = next(x for x in starts if x["msg"] == "engine ready")
    assert engine["kv_cache_tokens"] > 0 and engine["tp"] == 1 and engine["pp"] == 1
