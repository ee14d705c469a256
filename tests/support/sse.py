"""Read Server-Sent Events the way a client would: every ``data:`` line, JSON-decoded except
``[DONE]``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["next_event", "sse_data"]


def _decoded(line: str) -> Any:
    data = line.removeprefix("data: ")
    return data if data == "[DONE]" else json.loads(data)


def sse_data(lines: Iterable[str]) -> list[Any]:
    return [_decoded(line) for line in lines if line.startswith("data: ")]


def next_event(lines: Iterator[str]) -> Any:
    """The next event's data from a stream being read, past the blank lines between events and
    any comment (a ping); anything else is a broken stream."""
    line = next(line for line in lines if line and not line.startswith(":"))
    assert line.startswith("data: "), line
    return _decoded(line)
