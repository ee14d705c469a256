"""Read Server-Sent Events the way a client would: every ``data:`` line, JSON-decoded except
``[DONE]``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["sse_data"]


def sse_data(lines: Iterable[str]) -> list[Any]:
    events: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events
