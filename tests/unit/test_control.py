"""Overload control on the real app with a scripted service: the admission bound (429 with
Retry-After, streams holding their slot to the end), the request deadline, per-key limits."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from server.http.admission import Admission
from server.http.ratelimit import RateLimiter
from tests.support.fakes import MODEL, USAGE, FakeService, chat, running, sse_events


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("llama_serve_rejected_requests_total", {"reason": reason})


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def test_admission_counts_and_releases_once() -> None:
    admission = Admission({"m": 2})
    first, second = admission.acquire("m"), admission.acquire("m")
    with pytest.raises(Exception) as refused:
        admission.acquire("m")
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "1"}
    first.release()
    first.release()
    assert admission.held("m") == 1
    second.release()
    assert admission.held("m") == 0
    assert admission.acquire("unknown").admission is None  # the service answers it 404


def test_queue_bound_gives_429_with_retry_after_and_loses_nothing_below_it() -> None:
    """max_num_seqs 2 + max_waiting_requests 1: three requests are held, the fourth is
    refused at once, and the three all finish (one of them a stream)."""
    service = FakeService(max_num_seqs=2)

    async def go() -> tuple[list[httpx.Response], httpx.Response, httpx.Response, float]:
        before = rejected("overloaded")
        async with running(service, max_waiting_requests=1) as (client, app):
            service.hold = asyncio.Event()
            held = [
                asyncio.create_task(client.post("/v1/chat/completions", json=chat(s)))
                for s in (False, False, True)
            ]
            admission = app.state.control.admission
            await until(lambda: admission.held("fake-model") == 3)
            refused = await client.post("/v1/chat/completions", json=chat())
            service.hold.set()
            answers = await asyncio.gather(*held)
            await until(lambda: admission.held("fake-model") == 0)
            again = await client.post("/v1/chat/completions", json=chat())
            return answers, refused, again, rejected("overloaded") - before

    answers, refused, again, counted = asyncio.run(go())
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert sse_events(answers[2].text)[-1] == "[DONE]"
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.json()["error"]["code"] == "queue_full"
    assert again.status_code == 200 and counted == 1


def test_deadline_gives_504_and_stops_the_generation() -> None:
    service = FakeService(delay=5.0)

    async def go() -> tuple[httpx.Response, httpx.Response, float]:
        before = rejected("timeout")
        async with running(service, request_timeout=0.2) as (client, _):
            plain = await client.post("/v1/chat/completions", json=chat())
            streamed = await client.post("/v1/chat/completions", json=chat(True))
        return plain, streamed, rejected("timeout") - before

    plain, streamed, counted = asyncio.run(go())
    assert plain.status_code == 504
    assert plain.json()["error"]["code"] == "request_timeout"
    events = sse_events(streamed.text)
    assert streamed.status_code == 200
    assert events[-2]["error"]["code"] == "request_timeout" and events[-1] == "[DONE]"
    assert service.closed == 2 and counted == 2


def test_rate_limit_headers_and_429_when_a_key_is_over() -> None:
    async def go() -> list[httpx.Response]:
        settings = {"api_key": ["a", "b"], "rate_limit_requests_per_day": 2}
        async with running(**settings) as (client, _):
            a, b = ({"Authorization": f"Bearer {k}"} for k in ("a", "b"))
            return [
                await client.post("/v1/chat/completions", json=chat(), headers=a),
                await client.post("/v1/chat/completions", json=chat(True), headers=a),
                await client.post("/v1/chat/completions", json=chat(), headers=a),
                await client.post("/v1/chat/completions", json=chat(), headers=b),
            ]

    first, second, third, other_key = asyncio.run(go())
    assert first.headers["x-ratelimit-limit-requests-day"] == "2"
    assert first.headers["x-ratelimit-remaining-requests-day"] == "1"
    assert second.headers["x-ratelimit-remaining-requests-day"] == "0"
    assert 0 < float(first.headers["x-ratelimit-reset-requests-day"]) <= 86400
    assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(third.headers["retry-after"]) <= 86400
    assert other_key.status_code == 200
    assert "x-ratelimit-limit-tokens-minute" not in first.headers


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_window_fills_then_resets_at_the_minute() -> None:
    clock = Clock(60 * 20_000 + 20.0)  # 20 s into a minute
    limiter = RateLimiter(requests_per_day=None, tokens_per_minute=100, clock=clock)
    headers = limiter.admit("k")
    assert headers["x-ratelimit-remaining-tokens-minute"] == "100"
    assert float(headers["x-ratelimit-reset-tokens-minute"]) == pytest.approx(40.0)
    limiter.add_tokens("k", 100)
    with pytest.raises(Exception) as refused:
        limiter.admit("k")
    assert refused.value.headers["Retry-After"] == "40"
    assert refused.value.headers["x-ratelimit-remaining-tokens-minute"] == "0"
    limiter.admit("other")  # per key
    clock.now += 40
    assert limiter.admit("k")["x-ratelimit-remaining-tokens-minute"] == "100"


def test_uncached_bucket_fills_apart_from_the_total_one() -> None:
    """Cerebras's two buckets: a request whose prompt the cache held spends all its tokens
    from the total bucket but only its uncached ones (prompt - cached + completion) from the
    other; either bucket used up refuses the key until the minute ends."""
    clock = Clock(60 * 20_000 + 15.0)
    limiter = RateLimiter(
        requests_per_day=None, tokens_per_minute=1000, uncached_tokens_per_minute=100, clock=clock
    )
    headers = limiter.admit("k")
    assert headers["x-ratelimit-limit-uncached-tokens-minute"] == "100"
    assert headers["x-ratelimit-remaining-uncached-tokens-minute"] == "100"
    assert float(headers["x-ratelimit-reset-uncached-tokens-minute"]) == pytest.approx(45.0)
    limiter.add_tokens("k", 520, 40)  # 500-token prompt, 480 of them cached, 20 generated
    headers = limiter.admit("k")
    assert headers["x-ratelimit-remaining-tokens-minute"] == "480"
    assert headers["x-ratelimit-remaining-uncached-tokens-minute"] == "60"
    limiter.add_tokens("k", 70, 60)
    with pytest.raises(Exception) as refused:  # 410 of 1000 total left, 0 uncached
        limiter.admit("k")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "45"
    assert refused.value.headers["x-ratelimit-remaining-tokens-minute"] == "410"
    clock.now += 45
    assert limiter.admit("k")["x-ratelimit-remaining-uncached-tokens-minute"] == "100"


def test_uncached_bucket_alone_and_without_a_count_spends_all_tokens() -> None:
    limiter = RateLimiter(
        requests_per_day=None, tokens_per_minute=None, uncached_tokens_per_minute=50
    )
    assert limiter.enabled
    headers = limiter.admit("k")
    assert "x-ratelimit-limit-tokens-minute" not in headers
    limiter.add_tokens("k", 30)  # no cache count: every token is uncached
    assert limiter.headers("k")["x-ratelimit-remaining-uncached-tokens-minute"] == "20"


def test_uncached_tokens_of_a_request_reach_the_bucket_and_headers() -> None:
    """Through the real app: the scripted answer's usage (7 prompt tokens, 4 of them cached,
    3 generated) spends 10 total tokens and 6 uncached ones."""
    from server.common.protocol import PromptTokensDetails

    cached = USAGE.model_copy(
        update={"prompt_tokens_details": PromptTokensDetails(cached_tokens=4)}
    )

    class Cached(FakeService):
        async def complete(self, prep: Any) -> Any:
            return (await super().complete(prep)).model_copy(update={"usage": cached})

    async def go() -> list[httpx.Response]:
        settings = {
            "rate_limit_tokens_per_minute": 100,
            "rate_limit_uncached_tokens_per_minute": 50,
        }
        async with running(Cached(), **settings) as (client, _):
            return [await client.post("/v1/chat/completions", json=chat()) for _ in range(2)]

    first, second = asyncio.run(go())
    assert first.json()["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    # Both are of the same minute unless the first answer straddled its end.
    left = (
        second.headers["x-ratelimit-remaining-tokens-minute"],
        second.headers["x-ratelimit-remaining-uncached-tokens-minute"],
    )
    assert left in {("90", "44"), ("100", "50")}


def test_expected_wait_counts_the_requests_ahead() -> None:
    """Two slots, three requests held: a fourth starts after two finish, and slots free up
    at two per mean service time."""
    admission = Admission({"m": 10}, {"m": 2})
    tickets = [admission.acquire("m") for _ in range(3)]
    assert admission.expected_wait("m") == 0.0  # no request has finished: nothing known
    admission.observe("m", 4.0)
    assert admission.expected_wait("m") == pytest.approx(2 * 4.0 / 2)
    admission.observe("m", 9.0)  # the mean moves a fifth of the way: 5 s
    assert admission.expected_wait("m") == pytest.approx(2 * 5.0 / 2)
    tickets[0].release()
    tickets[1].release()
    assert admission.expected_wait("m") == 0.0  # a slot is free
    admission.observe("unknown", 1.0)  # not served here: ignored
    assert admission.expected_wait("unknown") == 0.0


def test_queue_threshold_refuses_flex_and_auto_when_the_queue_is_long() -> None:
    """One slot, one request held and one known to take 2 s: a flex or auto request with
    queue_threshold 500 ms is a 429 with Retry-After at once; with 5000 ms, or as default or
    priority, it is admitted. A bad header is a 400 naming queue_threshold."""
    service = FakeService(max_num_seqs=1)
    statuses: dict[str, int] = {}

    async def go() -> dict[str, httpx.Response]:
        async with running(service) as (client, app):
            admission = app.state.control.admission
            admission.observe("fake-model", 2.0)
            service.hold = asyncio.Event()
            held = asyncio.create_task(client.post("/v1/chat/completions", json=chat()))
            await until(lambda: admission.held("fake-model") == 1)
            out = {}
            for name, tier, threshold in [
                ("flex", "flex", "500"),
                ("auto", "auto", "500"),
                ("flex_patient", "flex", "5000"),
                ("default", "default", "50"),
                ("priority", "priority", "50"),
                ("no_tier", None, "50"),
                ("bad", "flex", "20001"),
                ("junk", "flex", "9" * 5000),
            ]:
                body = chat(service_tier=tier) if tier else chat()
                headers = {"queue_threshold": threshold}
                out[name] = asyncio.create_task(
                    client.post("/v1/chat/completions", json=body, headers=headers)
                )
                await asyncio.sleep(0)
            await until(lambda: all(t.done() for k, t in out.items() if k in REFUSED))
            statuses.update({k: t.result().status_code for k, t in out.items() if t.done()})
            service.hold.set()
            await held
            return {k: await t for k, t in out.items()}

    REFUSED = {"flex", "auto", "bad", "junk"}
    answers = asyncio.run(go())
    assert {k: statuses[k] for k in REFUSED} == {"flex": 429, "auto": 429, "bad": 400, "junk": 400}
    refused = answers["flex"]
    assert refused.json()["error"]["code"] == "queue_threshold_exceeded"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    # 2 s expected (1 request ahead, 2 s each, 1 slot) against 0.5 s allowed.
    assert refused.headers["retry-after"] == "2"
    assert answers["bad"].json()["error"]["param"] == "queue_threshold"
    for admitted in ("flex_patient", "default", "priority", "no_tier"):
        assert answers[admitted].status_code == 200, admitted


def test_request_window_is_the_utc_day() -> None:
    clock = Clock(86400 * 20_000 + 3600.0)  # 01:00 UTC
    limiter = RateLimiter(requests_per_day=1, tokens_per_minute=None, clock=clock)
    limiter.admit("k")
    with pytest.raises(Exception) as refused:
        limiter.admit("k")
    assert refused.value.headers["Retry-After"] == str(23 * 3600)
    clock.now += 23 * 3600
    assert limiter.admit("k")["x-ratelimit-remaining-requests-day"] == "0"


def test_failed_generations_are_counted_per_model() -> None:
    from server.errors import FailedGenerationError

    class Failing(FakeService):
        async def complete(self, prep: Any) -> Any:
            raise FailedGenerationError("not JSON", failed_generation="{", param="response_format")

    def failed() -> float:
        name = "llama_serve_failed_generations_total"
        return REGISTRY.get_sample_value(name, {"model_name": "fake-model"}) or 0.0

    async def go() -> httpx.Response:
        async with running(Failing()) as (client, _):
            return await client.post("/v1/chat/completions", json=chat())

    before, bad_before = failed(), rejected("bad_request")
    r = asyncio.run(go())
    assert r.status_code == 400 and r.json()["error"]["failed_generation"] == "{"
    assert failed() - before == 1
    assert rejected("bad_request") == bad_before  # a failed generation is not a rejection


def test_the_cerebras_sdk_raises_the_error_class_of_a_stream_error_event() -> None:
    """The stream is a 200, its error event a 504: the Cerebras SDK reads the event's
    status_code, so it raises InternalServerError (5xx) as it would for a 504 response, not
    its bare APIStatusError; OpenAI's SDK raises APIError with the same message."""
    from cerebras.cloud.sdk import AsyncCerebras, InternalServerError

    async def go() -> Exception:
        async with running(FakeService(delay=5.0), request_timeout=0.2) as (client, _):
            sdk = AsyncCerebras(api_key="k", base_url="http://test", http_client=client)
            try:
                stream = await sdk.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
                )
                async for _ in stream:
                    pass
            except Exception as exc:
                return exc
        raise AssertionError("the stream ended without an error")

    error = asyncio.run(go())
    assert isinstance(error, InternalServerError), type(error)
    assert "longer than the server's limit" in str(error)
