"""A minimal incremental Server-Sent Events parser for Chat Completions streams.

Written here rather than pulled from a library because the benchmark needs the arrival time
of each event as bytes come off the socket, and the format used by OpenAI-style servers is
small: ``data:`` lines, blank-line separators, ``:`` comments, ``data: [DONE]`` at the end.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = ["DONE", "SSEEvent", "SSEParser"]

DONE = "[DONE]"
"""The sentinel data OpenAI-compatible servers send as the last event."""


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: its ``event:`` name (``message`` by default) and joined data."""

    data: str
    event: str = "message"


class SSEParser:
    """Feed bytes as they arrive; get back the events they complete.

    Follows the WHATWG rules that matter here: lines end with ``\\n``, ``\\r\\n`` or ``\\r``;
    several ``data:`` lines join with ``\\n``; one leading space after the colon is dropped;
    a blank line dispatches; comments and unknown fields are ignored. UTF-8 sequences split
    across network chunks are decoded correctly.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes; return the events completed by them, in order."""
        self._buffer += self._decoder.decode(chunk)
        events: list[SSEEvent] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return events
            line, width = cut
            # A lone "\r" at the very end may be the first half of "\r\n": wait for more.
            if width == 1 and self._buffer[line] == "\r" and line + 1 == len(self._buffer):
                return events
            text, self._buffer = self._buffer[:line], self._buffer[line + width :]
            event = self._process(text)
            if event is not None:
                events.append(event)

    def flush(self) -> list[SSEEvent]:
        """End of stream: dispatch a last event that lacked its trailing blank line."""
        self._buffer += self._decoder.decode(b"", final=True)
        events = self.feed(b"\n") if self._buffer else []
        last = self._process("")
        return [*events, last] if last is not None else events

    def _process(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent(data="\n".join(self._data), event=self._event or "message")
            self._data, self._event = [], ""
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def _line_end(buffer: str) -> tuple[int, int] | None:
    """Index and width of the first line terminator in ``buffer``, or ``None``."""
    newline, carriage = buffer.find("\n"), buffer.find("\r")
    if carriage == -1 or (newline != -1 and newline < carriage):
        return None if newline == -1 else (newline, 1)
    return (carriage, 2) if buffer[carriage + 1 : carriage + 2] == "\n" else (carriage, 1)
