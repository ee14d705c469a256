"""Drain and engine-death logic (server.lifecycle), API keys (server.http.auth) and the rejection
reasons (server.metrics), without a server."""

from __future__ import annotations

import asyncio
import hmac
import signal
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn

from server import errors
from server.http.auth import ApiKeys, key_id
from server.lifecycle import GracefulServer, Lifecycle, watch_engines
from server.settings import Settings


def test_drain_waits_for_in_flight_requests_then_stops() -> None:
    async def go() -> list[Any]:
        life = Lifecycle(drain_timeout=5)
        stops: list[float] = []
        loop = asyncio.get_running_loop()
        life.on_stop(lambda: stops.append(loop.time()))
        life.enter()
        life.drain()
        await asyncio.sleep(0.3)
        seen = [life.state, list(stops)]
        life.leave()
        left = loop.time()
        await asyncio.wait_for(_until(lambda: bool(stops)), 2)
        return [*seen, 0 <= stops[0] - left < 1, life.exit_code]

    # Not stopped while a request was in flight; stopped soon after it left.
    assert asyncio.run(go()) == ["draining", [], True, 0]


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_drain_timeout_stops_anyway() -> None:
    async def go() -> list[Any]:
        life = Lifecycle(drain_timeout=0.2)
        stopped = asyncio.Event()
        life.on_stop(stopped.set)
        life.enter()
        life.drain()
        await asyncio.wait_for(stopped.wait(), 2)
        return [life.inflight, life.exit_code]

    assert asyncio.run(go()) == [1, 0]


def test_watchdog_marks_a_dead_engine_and_exits_non_zero() -> None:
    async def go() -> list[Any]:
        life = Lifecycle(drain_timeout=30)
        stopped = asyncio.Event()
        life.on_stop(stopped.set)
        engine = SimpleNamespace(alive=True)
        pool = [SimpleNamespace(id="m", engine=engine)]
        watcher = asyncio.create_task(watch_engines(pool, life, interval=0.01))
        await asyncio.sleep(0.05)
        alive_state = life.state
        engine.alive = False
        await asyncio.wait_for(watcher, 1)
        await asyncio.wait_for(stopped.wait(), 3)
        return [alive_state, life.state, life.exit_code]

    assert asyncio.run(go()) == ["serving", "dead", 1]


def test_signals_drain_first_then_stop_then_force() -> None:
    from sse_starlette.sse import AppStatus

    saved = (AppStatus.should_exit, AppStatus.enable_automatic_graceful_drain)

    async def go() -> list[Any]:
        life = Lifecycle(drain_timeout=30)
        server = GracefulServer(uvicorn.Config(app=None), life)
        server._loop = asyncio.get_running_loop()
        life.enter()
        server.handle_exit(signal.SIGTERM, None)
        await asyncio.sleep(0.1)
        first = [life.state, server.should_exit, AppStatus.should_exit]
        server.handle_exit(signal.SIGTERM, None)
        second = [server.should_exit, AppStatus.should_exit, server.force_exit]
        server.handle_exit(signal.SIGINT, None)
        return [first, second, server.force_exit, server._captured_signals]

    try:
        first, second, forced, captured = asyncio.run(go())
    finally:
        AppStatus.should_exit, AppStatus.enable_automatic_graceful_drain = saved
    assert first == ["draining", False, False]  # streams untouched while draining
    assert second == [True, True, False]
    assert forced is True
    assert captured == []  # so uvicorn does not re-raise SIGTERM: the exit code stays 0


def test_keys_from_every_source(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("# comment\nfile-key\n\n")
    monkeypatch.setenv("LLAMA_SERVE_API_KEY", "env-1, env-2")
    keys = ApiKeys.from_settings(Settings(api_key_file=path))
    assert len(keys) == 3
    for key in ("env-1", "env-2", "file-key"):
        assert keys.check(f"Bearer {key}") == key_id(key)
    assert ApiKeys.from_settings(Settings(api_key=["flag"])).check("Bearer flag")
    monkeypatch.delenv("LLAMA_SERVE_API_KEY")
    assert not ApiKeys.from_settings(Settings()).enabled
    assert ApiKeys.from_settings(Settings()).check("Bearer anything") is None


def test_every_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keys = ApiKeys(["first", "second", "third"])
    assert keys.check("Bearer first") == key_id("first")  # a match does not stop the loop
    assert len(calls) == 3
    assert keys.check("Bearer nope") is None and len(calls) == 6
    assert "first" not in key_id("first")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (errors.AuthenticationError("x"), "auth"),
        (errors.OverloadedError("x"), "overloaded"),
        (errors.RateLimitedError("x"), "rate_limited"),
        (errors.DrainingError("x"), "draining"),
        (errors.EngineDeadError("x"), "engine_dead"),
        (errors.RequestTimeoutError("x"), "timeout"),
        (errors.BadRequestError("x"), "bad_request"),
        (errors.ModelNotFoundError("x"), "not_found"),
        (errors.ContentTooLargeError("x"), "too_large"),
        (errors.FailedGenerationError("x", failed_generation="{", param="p"), None),
        (errors.InternalError("x"), None),
    ],
)
def test_rejection_reasons(error: errors.APIError, reason: str | None) -> None:
    assert error.reason == reason


def test_cli_flags_for_operations() -> None:
    from server.cli import settings_from_args

    settings = settings_from_args(
        [
            "--api-key",
            "sk-first",
            "--api-key",
            "sk-second",
            "--metrics-public",
            "--max-waiting-requests",
            "3",
            "--request-timeout",
            "2.5",
            "--drain-timeout",
            "0",
            "--rate-limit-tokens-per-minute",
            "1000",
        ]
    )
    assert [k.get_secret_value() for k in settings.api_key] == ["sk-first", "sk-second"]
    assert "sk-" not in repr(settings)  # keys are secrets, hidden in reprs and tracebacks
    assert settings.metrics_public and settings.max_waiting_requests == 3
    assert (settings.request_timeout, settings.drain_timeout) == (2.5, 0)
    assert settings.rate_limit_tokens_per_minute == 1000
    assert settings.rate_limit_requests_per_day is None
