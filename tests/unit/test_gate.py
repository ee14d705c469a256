"""The front door (server.http.gate) on the real app with a scripted service: API keys on every
route, spelling and method; x-request-id; drain and engine-death refusals; the access log."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from tests.support.fakes import MODEL, chat, running, sse_events
from tests.support.path_spellings import PATH_SPELLINGS

KEY = "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]
SPELLINGS = [  # with some that only ASGI can carry
    *PATH_SPELLINGS,
    "/Health",
    "/./health/",
    "/health?x=1/../metrics",
    "/health%00",
    "/health ",
    "",
]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def route_paths(app: Any) -> list[str]:
    """Every path the app serves, with path parameters filled in."""
    return [re.sub(r"\{[^}]+\}", "x", route.path) for route in app.routes]


async def raw(client: httpx.AsyncClient, method: str, path: str) -> httpx.Response:
    url = httpx.URL("http://test").copy_with(raw_path=path.encode())
    return await client.request(method, url)


async def asgi_status(app: Any, method: str, target: str) -> int:
    """Send ``target`` to the app exactly as uvicorn would: the path percent-decoded, nothing
    else normalised (httpx would resolve dot segments)."""
    raw_path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = dict(start["headers"])
    if start["status"] == 401:
        assert headers[b"www-authenticate"] == b"Bearer"
    return start["status"]


def test_every_route_spelling_and_method_needs_a_key() -> None:
    async def go() -> list[tuple[str, str, int]]:
        async with running(api_key=[KEY]) as (_, app):
            targets = sorted(set(route_paths(app) + SPELLINGS))
            assert {"/v1/chat/completions", "/v1/completions", "/metrics"} <= set(targets)
            slipped = []
            for target in targets:
                path = unquote(target.partition("?")[0])
                for method in METHODS:
                    exempt = path == "/health" and method == "GET"
                    status = await asgi_status(app, method, target)
                    if (status == 401) == exempt:
                        slipped.append((method, target, status))
            return slipped

    assert run(go()) == []


def test_wrong_keys_and_schemes_are_refused() -> None:
    bad = [
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
        {"Authorization": "Bearer "},
        {"X-Api-Key": KEY},
        {"Authorization": f"Bearer {KEY.upper()}"},
    ]

    async def go() -> list[int]:
        async with running(api_key=[KEY]) as (client, _):
            return [(await client.get("/v1/models", headers=h)).status_code for h in bad]

    assert run(go()) == [401] * len(bad)


def test_health_is_public_exactly_as_the_router_serves_it() -> None:
    async def go() -> dict[str, int]:
        async with running(api_key=[KEY]) as (client, _):
            return {
                "GET /health": (await client.get("/health")).status_code,
                "HEAD /health": (await client.head("/health")).status_code,
                # Percent-decoding happens before routing: this *is* /health.
                "GET /%68ealth": (await raw(client, "GET", "/%68ealth")).status_code,
                "POST /health": (await client.post("/health")).status_code,
                "GET /metrics": (await client.get("/metrics")).status_code,
            }

    assert run(go()) == {
        "GET /health": 200,
        "HEAD /health": 401,
        "GET /%68ealth": 200,
        "POST /health": 401,
        "GET /metrics": 401,
    }


def test_metrics_public_opens_metrics_only() -> None:
    async def go() -> tuple[int, int, int]:
        async with running(api_key=[KEY], metrics_public=True) as (client, _):
            return (
                (await client.get("/metrics")).status_code,
                (await raw(client, "GET", "/metrics/")).status_code,
                (await client.get("/v1/models")).status_code,
            )

    assert run(go()) == (200, 401, 401)


def test_with_a_key_the_answers_are_those_of_an_open_server() -> None:
    def strip(r: httpx.Response) -> Any:
        body = r.json()
        if "id" in body and str(body["id"]).startswith("chatcmpl-"):
            body = body | {"id": "", "created": 0}
        return r.status_code, body

    async def answers(headers: dict[str, str], **settings: Any) -> list[Any]:
        async with running(**settings) as (client, _):
            return [
                strip(await client.get("/v1/models", headers=headers)),
                strip(await client.get(f"/v1/models/{MODEL}", headers=headers)),
                strip(await client.post("/v1/chat/completions", json=chat(), headers=headers)),
                strip(await client.post("/v1/chat/completions", json={}, headers=headers)),
            ]

    keyed = run(answers(AUTH | {"Authorization": f"bearer {KEY}"}, api_key=["other", KEY]))
    assert keyed == run(answers({}))
    assert [status for status, _ in keyed] == [200, 200, 200, 400]


def test_keys_from_a_file(tmp_path: Any) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# ops keys\n\n  {KEY}  \nsecond-key\n")

    async def go() -> list[int]:
        async with running(api_key_file=path) as (client, _):
            return [
                (await client.get("/v1/models", headers=h)).status_code
                for h in (AUTH, {"Authorization": "Bearer second-key"}, {})
            ]

    assert run(go()) == [200, 200, 401]


def test_x_request_id_is_echoed_or_made() -> None:
    async def go() -> list[str]:
        async with running() as (client, _):
            given = {"x-request-id": "trace-42"}
            return [
                (await client.post("/v1/chat/completions", json=chat(), headers=given)).headers[
                    "x-request-id"
                ],
                (await client.post("/v1/chat/completions", json=chat(True), headers=given)).headers[
                    "x-request-id"
                ],
                (await client.post("/v1/chat/completions", json=chat())).headers["x-request-id"],
                (await client.get("/v1/models")).headers["x-request-id"],
                (await client.get("/v1/models", headers={"x-request-id": "bad id\t"})).headers[
                    "x-request-id"
                ],
            ]

    echoed, streamed, made, other, unsafe = run(go())
    assert echoed == streamed == "trace-42"
    assert made.startswith("chatcmpl-")
    assert other.startswith("req-") and unsafe.startswith("req-")


def test_draining_refuses_work_but_not_probes() -> None:
    async def go() -> dict[str, Any]:
        async with running() as (client, app):
            app.state.lifecycle.state = "draining"
            health = await client.get("/health")
            work = await client.post("/v1/chat/completions", json=chat())
            models = await client.get("/v1/models")
            metrics = await client.get("/metrics")
            app.state.lifecycle.state = "serving"
            return {
                "health": (health.status_code, health.json()["error"]["code"]),
                "work": (
                    work.status_code,
                    work.json()["error"]["code"],
                    work.headers["connection"],
                ),
                "models": models.status_code,
                "metrics": metrics.status_code,
            }

    assert run(go()) == {
        "health": (503, "draining"),
        "work": (503, "draining", "close"),
        "models": 503,
        "metrics": 200,
    }


def test_a_dead_engine_turns_health_and_work_to_503() -> None:
    async def go() -> tuple[Any, ...]:
        async with running() as (client, app):
            app.state.service.pool.model.engine.alive = False
            health = await client.get("/health")
            app.state.lifecycle.state = "dead"
            work = await client.post("/v1/chat/completions", json=chat())
            app.state.lifecycle.state = "serving"
            return health.status_code, health.json()["error"]["code"], work.status_code

    assert run(go()) == (503, "engine_dead", 503)


def test_one_access_log_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        async with running(api_key=[KEY]) as (client, _):
            headers = AUTH | {"x-request-id": "log-1"}
            await client.post("/v1/chat/completions", json=chat(user="u-9"), headers=headers)
            headers = AUTH | {"x-request-id": "log-2"}
            r = await client.post("/v1/chat/completions", json=chat(True), headers=headers)
            assert sse_events(r.text)[-1] == "[DONE]"
            await client.get("/v1/models", headers={"x-request-id": "log-3"})
            pinned = AUTH | {"x-request-id": "log-4", "X-Cerebras-Version-Patch": "2"}
            r = await client.post("/v1/chat/completions", json=chat(), headers=pinned)
            assert r.status_code == 200
            odd = AUTH | {"x-request-id": "log-5", "X-Cerebras-Version-Patch": '2; x="y"'}
            assert (await client.get("/v1/models", headers=odd)).status_code == 200

    with caplog.at_level(logging.INFO, logger="server.access"):
        run(go())
    lines = {r.request_id: r for r in caplog.records if r.name == "server.access"}
    assert set(lines) == {"log-1", "log-2", "log-3", "log-4", "log-5"}
    plain, streamed, refused = lines["log-1"], lines["log-2"], lines["log-3"]
    assert plain.status == 200 and plain.model == MODEL and plain.user == "u-9"
    assert plain.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert plain.time_info["total_time"] == 0.07
    assert plain.id.startswith("chatcmpl-") and plain.key_id.startswith("key-")
    assert KEY not in str(vars(plain)) and "hello" not in str(vars(plain))
    assert streamed.stream is True and streamed.usage["total_tokens"] == 10
    assert refused.status == 401 and refused.error == "invalid_api_key"
    # The version a client pins is served and logged; a value that is no version is not logged.
    assert lines["log-4"].version_patch == "2" and not hasattr(plain, "version_patch")
    assert not hasattr(lines["log-5"], "version_patch")


def test_log_prompts_adds_the_messages(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        async with running(log_prompts=True) as (client, _):
            await client.post("/v1/chat/completions", json=chat())

    with caplog.at_level(logging.INFO, logger="server.access"):
        run(go())
    (line,) = [r for r in caplog.records if r.name == "server.access"]
    assert line.messages == [{"role": "user", "content": "hello"}]
