"""Cached tokens and service tiers on one real server: smollm2-135m running ONE request at a
time (max_num_seqs 1), so that every other request waits in the engine's queue, where the
service tier orders it.

- A second request with the same ~1,000-token prefix reports the engine's prefix-cache hits in
  ``usage.prompt_tokens_details.cached_tokens``, plain and streamed, read by the openai and
  cerebras SDKs; ``prompt_cache_key`` is accepted and logged.
- Under a burst, ``priority`` requests overtake the ``flex`` ones queued before them (the
  engine takes them first, and their median time in its queue is lower); a flex request with
  a short ``queue_threshold`` is refused at once with 429 and ``Retry-After``.
"""

from __future__ import annotations

import json
import statistics
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from cerebras.cloud.sdk import Cerebras

from tests.support.closing import Closing
from tests.support.probes import engine_requests, wait_idle, wait_until
from tests.support.serverproc import ServerProcess, preset_file, start_server

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def one_seq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("one-seq")
    model_file = preset_file(folder, MODEL, max_num_seqs=1)
    server = start_server("--model", str(model_file), log_dir=folder)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def client(one_seq: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{one_seq.base_url}/v1", api_key="none", max_retries=0) as c:
        yield c


def long_prefix() -> str:
    """About 1,000 tokens, new to the cache: it starts with a fresh id."""
    words = " ".join(f"line {i}: the {i % 7} quick foxes" for i in range(96))
    return f"Session {uuid.uuid4().hex}. Read this log and answer.\n{words}"


QUESTION = 16
"""More than the tokens of a question and the chat template's end."""


def block_size(server: ServerProcess) -> int:
    """The engine's KV block size, from its startup log: the prefix cache's unit."""
    for text in server.log().splitlines():
        if text.startswith("{") and '"msg": "engine ready"' in text:
            return int(json.loads(text)["block_size"])
    raise AssertionError("no 'engine ready' log line")


def assert_cached(usage: Any, server: ServerProcess) -> None:
    """A repeat of a prompt but its question: the prefix cache held all of it in whole KV
    blocks but the last block, where the questions differ."""
    cached, block = usage.prompt_tokens_details.cached_tokens, block_size(server)
    assert cached % block == 0 and 0 < usage.prompt_tokens - cached <= block + QUESTION, usage


def ask(prefix: str, question: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"{prefix}\nQuestion: {question}"}],
        "max_tokens": 4,
        "temperature": 0,
    }


# ------------------------------------------------------------------ cached tokens


def test_second_request_with_the_same_prefix_reports_cached_tokens(
    client: openai.OpenAI, one_seq: ServerProcess
) -> None:
    prefix = long_prefix()
    first = client.chat.completions.create(**ask(prefix, "How many lines?"))
    second = client.chat.completions.create(
        **ask(prefix, "Which line is last?"), prompt_cache_key="session-42"
    )
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens >= 1000
    assert first.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details is not None
    cold = first.usage.prompt_tokens_details.cached_tokens or 0
    warm = second.usage.prompt_tokens_details.cached_tokens or 0
    print(
        f"cached_tokens: first {cold} of {first.usage.prompt_tokens}, "
        f"second {warm} of {second.usage.prompt_tokens}"
    )
    # The first shares at most the chat template's opening with earlier requests; the second
    # shares the whole prefix, in whole KV blocks, up to the block where the questions differ.
    block = block_size(one_seq)
    assert cold < block
    assert_cached(second.usage, one_seq)
    line = one_seq.access_line(second.id, field="id")
    assert line["prompt_cache_key"] == "session-42"
    assert line["usage"]["prompt_tokens_details"]["cached_tokens"] == warm


def test_streamed_usage_reports_cached_tokens(
    client: openai.OpenAI, one_seq: ServerProcess
) -> None:
    """In OpenAI's usage chunk (include_usage) and in the final chunk (Cerebras's habit)."""
    prefix = long_prefix()
    client.chat.completions.create(**ask(prefix, "How many lines?"))
    for options in ({"include_usage": True}, None):
        extra = {"stream_options": options} if options else {}
        stream = client.chat.completions.create(**ask(prefix, "Last?"), stream=True, **extra)
        usages = [chunk.usage for chunk in stream if chunk.usage is not None]
        assert len(usages) == 1, options
        details = usages[0].prompt_tokens_details
        assert details is not None and details.cached_tokens is not None
        print(f"streamed {options}: cached_tokens {details.cached_tokens}")
        assert_cached(usages[0], one_seq)


def test_cerebras_sdk_reads_cached_tokens(one_seq: ServerProcess, closing: Closing) -> None:
    cerebras = closing(Cerebras(base_url=one_seq.base_url, api_key="none", max_retries=0))
    prefix = long_prefix()
    cerebras.chat.completions.create(**ask(prefix, "How many lines?"))
    r: Any = cerebras.chat.completions.create(**ask(prefix, "Last?"), prompt_cache_key="k")
    assert_cached(r.usage, one_seq)
    assert r.service_tier is None  # none asked for: none echoed


def test_text_completions_report_cached_tokens(
    client: openai.OpenAI, one_seq: ServerProcess
) -> None:
    """/v1/completions counts the same cache: plain, and in both streamed usages."""
    prefix = long_prefix()
    first = client.completions.create(
        model=MODEL, prompt=f"{prefix}\nQ: How many lines?", max_tokens=4, temperature=0
    )
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert (first.usage.prompt_tokens_details.cached_tokens or 0) < block_size(one_seq)
    second = client.completions.create(
        model=MODEL, prompt=f"{prefix}\nQ: Last?", max_tokens=4, temperature=0
    )
    assert second.usage is not None
    print(f"completions: cached_tokens {second.usage.prompt_tokens_details}")
    assert_cached(second.usage, one_seq)
    for options in ({"include_usage": True}, None):
        extra = {"stream_options": options} if options else {}
        stream = client.completions.create(
            model=MODEL,
            prompt=f"{prefix}\nQ: First?",
            max_tokens=4,
            temperature=0,
            stream=True,
            **extra,
        )
        usages = [chunk.usage for chunk in stream if chunk.usage is not None]
        assert len(usages) == 1, options
        assert_cached(usages[0], one_seq)


# ------------------------------------------------------------------ service tiers


def test_service_tier_is_echoed_and_a_bad_one_named(client: openai.OpenAI) -> None:
    hi = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for tier in ("auto", "default", "flex", "priority"):
        r = client.chat.completions.create(**hi, service_tier=tier)  # type: ignore[arg-type]
        assert r.service_tier == tier
        used = getattr(r, "service_tier_used", None)
        assert used == ("default" if tier == "auto" else None), tier
        chunks = list(client.chat.completions.create(**hi, service_tier=tier, stream=True))  # type: ignore[arg-type]
        assert {c.service_tier for c in chunks} == {tier}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**hi, service_tier="scale")  # type: ignore[arg-type]
    assert refused.value.status_code == 400
    body: Any = refused.value.body
    assert body["param"] == "service_tier"


BLOCKER_TOKENS = 7000
"""The flex request holding the engine's one slot while every other request queues. The test
ends it (closing its stream aborts it) once the queue is set; its length is only how long the
test process may stall before that (CI saw a test process stop for 30 s or more while its
server went on), minutes here, and costs nothing."""
WAITING_FLEX = 4
FLEX_TOKENS = 32
PRIORITY_REQUESTS = 3
PRIORITY_TOKENS = 16


def test_priority_requests_overtake_queued_flex_ones(
    client: openai.OpenAI, one_seq: ServerProcess
) -> None:
    """One request runs at a time. A long flex request takes the slot; four flex requests
    queue behind it, then three priority ones (with a queue_threshold header, which does not
    apply to them). When the long one is aborted, the engine takes every priority request
    before the flex ones that were waiting longer. A flex request with queue_threshold 50 ms
    sent meanwhile is refused at once.

    Nothing here races the clock: the test moves on when /metrics shows the engine holding
    the requests, and the slot is freed when the test says so. The order is the engine's:
    each request's arrival (``time_info.created``) plus its time in the engine's queue
    (``time_info.queue_time``) is when the engine took it. What the client sees is no measure
    of it: in CI a stalled test process read all seven first tokens within 30 ms."""
    url = one_seq.base_url
    wait_idle(url, 120)
    # One finished request tells the server how long requests take (queue_threshold's
    # estimate needs it).
    client.chat.completions.create(**long_request("warm-up", FLEX_TOKENS))
    timing: dict[str, dict[str, float]] = {}
    errors: list[BaseException] = []
    release = threading.Event()

    def run(name: str, tier: str, tokens: int) -> None:
        try:
            headers = {"queue_threshold": "50"} if tier == "priority" else {}
            with client.chat.completions.create(
                **long_request(name, tokens),
                service_tier=tier,  # type: ignore[arg-type]
                stream=True,
                extra_headers=headers,
            ) as stream:
                for chunk in stream:
                    info = (chunk.model_extra or {}).get("time_info")
                    if info is not None:
                        timing[name] = info
                    if name == "blocker" and release.is_set():
                        return  # closing the stream aborts the request: the slot is free
        except Exception as exc:  # reported by the test, after the threads end
            errors.append(exc)

    def start(names: list[str], tier: str, tokens: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=run, args=(n, tier, tokens)) for n in names]
        for thread in threads:
            thread.start()
        return threads

    def engine_holds(count: int) -> bool:
        assert not errors, errors
        assert "blocker" not in timing, "the long request ended before the others were queued"
        return engine_requests(url) == count

    flex = [f"flex-{i}" for i in range(WAITING_FLEX)]
    prio = [f"priority-{i}" for i in range(PRIORITY_REQUESTS)]
    threads = start(["blocker"], "flex", BLOCKER_TOKENS)
    wait_until(lambda: engine_holds(1), 120, "the long request running")
    threads += start(flex, "flex", FLEX_TOKENS)
    wait_until(lambda: engine_holds(1 + WAITING_FLEX), 120, "all flex requests queued")

    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(
            **long_request("impatient", FLEX_TOKENS),
            service_tier="flex",
            extra_headers={"queue_threshold": "50"},
        )
    assert refused.value.response.headers["retry-after"].isdigit()
    assert int(refused.value.response.headers["retry-after"]) >= 1
    body: Any = refused.value.body
    assert body["code"] == "queue_threshold_exceeded"

    threads += start(prio, "priority", PRIORITY_TOKENS)
    # Eight requests held at once: none has ended, so every one but the blocker is waiting.
    wait_until(
        lambda: engine_holds(1 + WAITING_FLEX + PRIORITY_REQUESTS), 120, "all requests queued"
    )
    release.set()
    for thread in threads:
        thread.join(600)
    assert not errors, errors

    arrived = {name: timing[name]["created"] for name in flex + prio}
    waited = {name: timing[name]["queue_time"] for name in flex + prio}
    taken = {name: arrived[name] + waited[name] for name in flex + prio}
    order = sorted(taken, key=taken.__getitem__)
    print(f"taken by the engine in order: {order}")
    print("engine queue time: " + ", ".join(f"{n} {waited[n]:.2f} s" for n in flex + prio))
    # Every flex request arrived before any priority one; in arrival order, as FCFS would take
    # them, the priority ones would run last. They run first.
    assert max(arrived[n] for n in flex) < min(arrived[n] for n in prio)
    assert set(order[:PRIORITY_REQUESTS]) == set(prio), order
    assert statistics.median(waited[n] for n in prio) < statistics.median(waited[n] for n in flex)


def long_request(name: str, tokens: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"{name}: count to one thousand."}],
        "max_tokens": tokens,
        "extra_body": {"ignore_eos": True},
    }


def test_queue_threshold_out_of_range_is_a_400(one_seq: ServerProcess) -> None:
    r = httpx.post(
        f"{one_seq.base_url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2,
            "service_tier": "flex",
        },
        headers={"queue_threshold": "10"},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "queue_threshold"
