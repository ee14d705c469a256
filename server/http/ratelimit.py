"""Per-key rate limits in Cerebras's style: requests per UTC day, and tokens per minute in
two buckets, all tokens and uncached ones.

Simple fixed windows kept in memory (one process, lost on restart): the day window ends at
midnight UTC, the minute windows at the end of the wall-clock minute. A request is refused
(429 with ``Retry-After``) when its key has no requests left today or has used up either of
this minute's token buckets; the tokens a request uses are counted when it finishes. The
uncached bucket counts what Cerebras counts: prompt tokens the prefix cache did not hold, plus
the completion. Every chat completion answer carries the ``x-ratelimit-*`` headers of the
limits that are configured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.errors import RateLimitedError

__all__ = ["RateLimiter"]

DAY = 86400.0
MINUTE = 60.0


@dataclass
class _Window:
    start: float = 0.0
    used: int = 0


class RateLimiter:
    def __init__(
        self,
        *,
        requests_per_day: int | None,
        tokens_per_minute: int | None,
        uncached_tokens_per_minute: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.requests_per_day = requests_per_day
        self.tokens_per_minute = tokens_per_minute
        self.uncached_tokens_per_minute = uncached_tokens_per_minute
        self._clock = clock
        self._requests: dict[str, _Window] = {}
        self._tokens: dict[str, _Window] = {}
        self._uncached: dict[str, _Window] = {}

    @property
    def enabled(self) -> bool:
        limits = (self.requests_per_day, self.tokens_per_minute, self.uncached_tokens_per_minute)
        return any(limit is not None for limit in limits)

    def _buckets(self) -> list[tuple[str, int, dict[str, _Window], float]]:
        """The configured limits: (header name, limit, windows, window length)."""
        buckets = [
            ("requests-day", self.requests_per_day, self._requests, DAY),
            ("tokens-minute", self.tokens_per_minute, self._tokens, MINUTE),
            ("uncached-tokens-minute", self.uncached_tokens_per_minute, self._uncached, MINUTE),
        ]
        return [(name, limit, table, length) for name, limit, table, length in buckets if limit]

    def _window(self, table: dict[str, _Window], key: str, length: float) -> tuple[_Window, float]:
        """The key's current window and the seconds until it resets."""
        now = self._clock()
        start = now - now % length
        window = table.setdefault(key, _Window(start))
        if window.start != start:
            window.start, window.used = start, 0
        return window, start + length - now

    def admit(self, key: str) -> dict[str, str]:
        """Count one request for ``key``; its response headers, or RateLimitedError (429)."""
        headers = self.headers(key)
        waits = []
        for _, limit, table, length in self._buckets():
            window, reset = self._window(table, key, length)
            if window.used >= limit:
                waits.append(reset)
        if waits:
            wait = max(waits)
            raise RateLimitedError(
                f"Rate limit exceeded for this API key; retry in {wait:.0f} s.",
                headers=headers | {"Retry-After": str(math.ceil(wait))},
            )
        if self.requests_per_day is not None:
            self._window(self._requests, key, DAY)[0].used += 1
        return self.headers(key)

    def add_tokens(self, key: str, tokens: int, uncached: int | None = None) -> None:
        """Count a finished request's ``tokens`` (all) and ``uncached`` ones (default: all)."""
        if self.tokens_per_minute is not None:
            self._window(self._tokens, key, MINUTE)[0].used += tokens
        if self.uncached_tokens_per_minute is not None:
            spent = tokens if uncached is None else uncached
            self._window(self._uncached, key, MINUTE)[0].used += spent

    def headers(self, key: str) -> dict[str, str]:
        """Cerebras's ``x-ratelimit-*`` headers (resets in seconds) for the configured limits."""
        out: dict[str, str] = {}
        for name, limit, table, length in self._buckets():
            out |= self._window_headers(name, limit, table, key, length)
        return out

    def _window_headers(
        self, name: str, limit: int, table: dict[str, _Window], key: str, length: float
    ) -> dict[str, str]:
        window, reset = self._window(table, key, length)
        return {
            f"x-ratelimit-limit-{name}": str(limit),
            f"x-ratelimit-remaining-{name}": str(max(limit - window.used, 0)),
            f"x-ratelimit-reset-{name}": f"{reset:.3f}",
        }
