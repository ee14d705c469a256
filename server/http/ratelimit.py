"""Per-key rate limits in Cerebras's style: requests per UTC day, and tokens per minute in
two buckets, all tokens and uncached ones.

Simple fixed windows kept in memory (lost on restart): the day window ends at
midnight UTC, the minute windows at the end of the wall-clock minute. A request is refused
(429 with ``Retry-After``) when its key has no requests left today or has used up either of
this minute's token buckets; the tokens a request uses are counted when it finishes. The
uncached bucket counts what Cerebras counts: prompt tokens the prefix cache did not hold, plus
the completion. Every chat completion answer carries the ``x-ratelimit-*`` headers of the
limits that are configured.

With several API processes (``--api-processes``) a key's windows are the server's, not each
process's: :class:`SharedWindows` keeps every process's windows in one shared array, as vLLM's
``SharedAdmissionStats`` keeps its counts (each process writes only its own slots; a reader
adds up the slots of the current window). The keys are known when the server starts (every
process reads the same settings), so the array has one slot per process, key and limit. No
lock: requests counted by two processes at the same instant may each miss the other's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, MutableSequence, Sequence
from dataclasses import dataclass

from server.errors import RateLimitedError

__all__ = ["RateLimiter", "SharedWindows"]

DAY = 86400.0
MINUTE = 60.0
_REQUESTS, _TOKENS, _UNCACHED = 0, 1, 2  # the limits, as indexes into a key's shared slots
_LIMITS = 3


@dataclass
class _Window:
    start: float = 0.0
    used: int = 0


class SharedWindows:
    """Every API process's windows (start, used) for each known key and limit."""

    def __init__(
        self, array: MutableSequence[float], keys: Sequence[str], processes: int, index: int
    ) -> None:
        """``array``: :meth:`size` doubles shared by the processes (``multiprocessing.RawArray``
        of ``"d"``: a count is exact up to 2**53); ``index``: this process's."""
        self._array = array
        self._keys = {key: i for i, key in enumerate(keys)}
        self._processes = processes
        self._index = index

    @staticmethod
    def size(keys: int, processes: int) -> int:
        return processes * keys * _LIMITS * 2

    def _offset(self, process: int, key: int, limit: int) -> int:
        return ((process * len(self._keys) + key) * _LIMITS + limit) * 2

    def publish(self, limit: int, key: str, window: _Window) -> None:
        """This process's window of ``key`` (a key not known at start is not shared)."""
        if key in self._keys:
            at = self._offset(self._index, self._keys[key], limit)
            # The count first: a reader between the two writes sees the old start, so a new
            # window's count is never added to the old one.
            self._array[at + 1] = window.used
            self._array[at] = window.start

    def others(self, limit: int, key: str, start: float) -> int:
        """What the other processes used of ``key``'s window that began at ``start``."""
        if key not in self._keys:
            return 0
        used = 0
        for process in range(self._processes):
            at = self._offset(process, self._keys[key], limit)
            if process != self._index and self._array[at] == start:
                used += int(self._array[at + 1])
        return used


class RateLimiter:
    def __init__(
        self,
        *,
        requests_per_day: int | None,
        tokens_per_minute: int | None,
        uncached_tokens_per_minute: int | None = None,
        clock: Callable[[], float] = time.time,
        shared: SharedWindows | None = None,
    ) -> None:
        """``shared``: the windows of the other API processes (none: this process alone)."""
        self.requests_per_day = requests_per_day
        self.tokens_per_minute = tokens_per_minute
        self.uncached_tokens_per_minute = uncached_tokens_per_minute
        self._clock = clock
        self._shared = shared
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

    def _used(self, table: dict[str, _Window], key: str, length: float) -> tuple[int, float]:
        """What ``key`` used of its current window, in every process, and the seconds until
        the window resets."""
        window, reset = self._window(table, key, length)
        used = window.used
        if self._shared is not None:
            used += self._shared.others(self._limit(table), key, window.start)
        return used, reset

    def _limit(self, table: dict[str, _Window]) -> int:
        if table is self._requests:
            return _REQUESTS
        return _TOKENS if table is self._tokens else _UNCACHED

    def _count(self, table: dict[str, _Window], key: str, length: float, n: int) -> None:
        window = self._window(table, key, length)[0]
        window.used += n
        if self._shared is not None:
            self._shared.publish(self._limit(table), key, window)

    def admit(self, key: str) -> dict[str, str]:
        """Count one request for ``key``; its response headers, or RateLimitedError (429)."""
        headers = self.headers(key)
        waits = []
        for _, limit, table, length in self._buckets():
            used, reset = self._used(table, key, length)
            if used >= limit:
                waits.append(reset)
        if waits:
            wait = max(waits)
            raise RateLimitedError(
                f"Rate limit exceeded for this API key; retry in {wait:.0f} s.",
                headers=headers | {"Retry-After": str(math.ceil(wait))},
            )
        if self.requests_per_day is not None:
            self._count(self._requests, key, DAY, 1)
        return self.headers(key)

    def add_tokens(self, key: str, tokens: int, uncached: int | None = None) -> None:
        """Count a finished request's ``tokens`` (all) and ``uncached`` ones (default: all)."""
        if self.tokens_per_minute is not None:
            self._count(self._tokens, key, MINUTE, tokens)
        if self.uncached_tokens_per_minute is not None:
            self._count(self._uncached, key, MINUTE, tokens if uncached is None else uncached)

    def headers(self, key: str) -> dict[str, str]:
        """Cerebras's ``x-ratelimit-*`` headers (resets in seconds) for the configured limits."""
        out: dict[str, str] = {}
        for name, limit, table, length in self._buckets():
            out |= self._window_headers(name, limit, table, key, length)
        return out

    def _window_headers(
        self, name: str, limit: int, table: dict[str, _Window], key: str, length: float
    ) -> dict[str, str]:
        used, reset = self._used(table, key, length)
        return {
            f"x-ratelimit-limit-{name}": str(limit),
            f"x-ratelimit-remaining-{name}": str(max(limit - used, 0)),
            f"x-ratelimit-reset-{name}": f"{reset:.3f}",
        }
