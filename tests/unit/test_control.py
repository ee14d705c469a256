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
from tests.support.fakes import MODEL, FakeService, chat, running, sse_events


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
