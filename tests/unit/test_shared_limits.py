"""Admission and rate limits shared by several API processes (``--api-processes``): each
process's view is built here over one plain list standing for the shared memory, as two
processes would see the supervisor's ``RawArray``."""

from __future__ import annotations

import pytest
from vllm.v1.engine.admission_control import SharedAdmissionStats

from server.errors import OverloadedError, RateLimitedError
from server.http.admission import Admission
from server.http.ratelimit import RateLimiter, SharedWindows


def _admissions(limit: int, processes: int = 2) -> list[Admission]:
    counters = [0] * SharedAdmissionStats.num_counters(processes)
    return [
        Admission(
            {"m": limit},
            shared={
                "m": SharedAdmissionStats({"mp_admission_counters": counters}, processes, index)
            },
        )
        for index in range(processes)
    ]


def test_admission_bound_is_the_servers_not_each_processes() -> None:
    first, second = _admissions(limit=3)
    a = first.acquire("m")
    second.acquire("m")
    second.acquire("m")
    with pytest.raises(OverloadedError):
        first.acquire("m")  # this process holds 1, the server 3
    assert (first.held("m"), second.held("m"), first.held_by_all("m")) == (1, 2, 3)
    a.release()
    a.release()  # once only
    assert second.held_by_all("m") == 2
    second.acquire("m")  # the slot the other process freed
    with pytest.raises(OverloadedError):
        second.acquire("m")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _limiters(
    clock: Clock, keys: list[str], processes: int = 2, **limits: int
) -> list[RateLimiter]:
    array = [0.0] * SharedWindows.size(len(keys), processes)
    return [
        RateLimiter(
            requests_per_day=limits.get("requests_per_day"),
            tokens_per_minute=limits.get("tokens_per_minute"),
            clock=clock,
            shared=SharedWindows(array, keys, processes, index),
        )
        for index in range(processes)
    ]


def test_a_keys_daily_requests_are_counted_across_processes() -> None:
    clock = Clock(86400 * 20_000 + 3600.0)
    first, second = _limiters(clock, ["k", "j"], requests_per_day=3)
    first.admit("k")
    assert second.admit("k")["x-ratelimit-remaining-requests-day"] == "1"
    assert first.headers("k")["x-ratelimit-remaining-requests-day"] == "1"
    first.admit("k")
    with pytest.raises(RateLimitedError):
        second.admit("k")
    with pytest.raises(RateLimitedError):
        first.admit("k")
    assert second.admit("j")["x-ratelimit-remaining-requests-day"] == "2"  # per key
    clock.now += 23 * 3600  # the next UTC day: the old windows count for nothing
    assert second.admit("k")["x-ratelimit-remaining-requests-day"] == "2"
    assert first.admit("k")["x-ratelimit-remaining-requests-day"] == "1"


def test_tokens_used_in_one_process_close_the_minute_in_the_other() -> None:
    clock = Clock(60 * 20_000 + 20.0)
    first, second = _limiters(clock, ["k"], tokens_per_minute=100)
    first.admit("k")
    first.add_tokens("k", 60)
    second.admit("k")
    second.add_tokens("k", 40)
    with pytest.raises(RateLimitedError) as refused:
        first.admit("k")
    assert refused.value.headers["Retry-After"] == "40"
    clock.now += 40
    assert first.admit("k")["x-ratelimit-remaining-tokens-minute"] == "100"


def test_a_key_unknown_at_start_is_limited_per_process() -> None:
    clock = Clock(86400 * 20_000)
    first, second = _limiters(clock, ["k"], requests_per_day=1)
    first.admit("new")
    second.admit("new")  # not in the shared table: each process counts its own
    with pytest.raises(RateLimitedError):
        first.admit("new")
