"""``closing(client)``: an SDK client a test makes for itself, closed when the test ends, so
that no pooled connection is left to the garbage collector (a ResourceWarning reported in
whichever later test it happens to fall in). The ``closing`` fixture is in tests/conftest.py."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Protocol, TypeVar

__all__ = ["Closing", "closing_on"]


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


class Closing(Protocol):
    def __call__(self, client: C, /) -> C: ...


def closing_on(stack: ExitStack) -> Closing:
    """A ``closing`` whose clients ``stack`` closes."""

    def closing(client: C) -> C:
        stack.callback(client.close)
        return client

    return closing
