"""What ``grammars`` raises about a request. Each names the request field at fault
(``param``); the server turns them into its HTTP errors in one place."""

from __future__ import annotations

__all__ = [
    "CompilerUnavailableError",
    "GrammarError",
    "RequestError",
    "SchemaError",
    "UnsupportedError",
]


class GrammarError(Exception):
    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class RequestError(GrammarError):
    """The request's fields contradict each other (e.g. tool_choice without tools)."""


class UnsupportedError(GrammarError):
    """A valid combination of fields that cannot be enforced together."""


class SchemaError(GrammarError):
    """A JSON Schema (response_format or a tool's parameters) that is invalid or cannot be
    enforced in bounded time."""


class CompilerUnavailableError(GrammarError):
    """The grammar compiler could not start: no constraint can be checked."""
