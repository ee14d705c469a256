"""Cheap looks at raw JSON text before anything parses it: nesting depth, NaN and Infinity.

Python's ``json`` recurses once per level and raises ``RecursionError`` near 1,000 levels (and
code that walks the parsed value recurses too), and it accepts ``NaN`` and ``Infinity``, which
JSON does not. These scans use C-speed operations only (a regex replaces string literals,
numpy finds the deepest bracket), so 4 MiB of brackets takes milliseconds. Malformed JSON is
not their business: the real parser refuses it afterwards with a better message.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["has_nonfinite", "json_depth"]

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = np.frombuffer(b"[{", dtype=np.uint8)


def _outside_strings(data: bytes) -> bytes:
    return _STRING.sub(b'""', data)


def json_depth(data: bytes | str, at_least: int = 0) -> int:
    """The deepest nesting of arrays and objects in ``data`` (0 for a scalar).

    Returns early with a number <= ``at_least`` when ``data`` cannot be deeper than that
    (fewer opening brackets): the common, cheap case for a caller checking a limit.
    """
    raw = data.encode() if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= at_least:
        return min(at_least, raw.count(b"[") + raw.count(b"{"))
    brackets = np.frombuffer(_outside_strings(raw).translate(None, _NOT_BRACKETS), np.uint8)
    if brackets.size == 0:
        return 0
    steps = np.where(np.isin(brackets, _OPEN), 1, -1).astype(np.int64)
    return max(0, int(np.cumsum(steps).max()))


def has_nonfinite(data: bytes) -> bool:
    """True when ``NaN`` or ``Infinity`` appears outside string literals."""
    if b"NaN" not in data and b"Infinity" not in data:
        return False
    outside = _outside_strings(data)
    return b"NaN" in outside or b"Infinity" in outside
