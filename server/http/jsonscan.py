r"""Cheap looks at raw JSON text before anything parses it: nesting depth, how many arrays and
objects, NaN and Infinity.

Python's ``json`` recurses once per level and raises ``RecursionError`` near 1,000 levels (and
code that walks the parsed value recurses too), and it accepts ``NaN`` and ``Infinity``, which
JSON does not. Each array and object costs the parser an allocation that the garbage collector
then walks, all while it holds the GIL: 600,000 one-element lists (3 MB) took half a second,
in a worker thread as much as on the event loop. These scans read request bodies before they
are parsed (and tool-call arguments), so whatever the client sends they must take time linear
in its length, at C speed: a scan that is slower on some shape is a way to stall the server
with one request.

A regex that matches string literals is not linear: ``"[^"\\]*(?:\\.[^"\\]*)*"`` tried from
every quote of an unterminated string of escaped quotes (``"\"\"\"...``) rescans the rest
each time, so 40 KB took 8 s and 4 MiB would take about a day (quadratic time). Instead
(``_outside_strings``):

1. ``bytes.replace`` deletes every pair of backslashes, then every backslash-quote (both left
   to right): a run of backslashes leaves one exactly when it is odd, and then it escapes the
   next byte, so afterwards no escaped quote is left and every quote delimits a string;
2. numpy counts the quotes (a running sum): from an odd count on, up to the next quote, bytes
   are inside a string, and they are dropped, the quotes kept (each string becomes ``""``).

Neither step backtracks, and no Python code runs per byte: a scan of 4 MiB takes tens of
milliseconds whatever its shape (``tests/unit/test_jsonscan.py`` times a catalogue of shapes
at the body limit). numpy lets go of the GIL while it works and ``bytes.replace`` runs on 256
KiB at a time, so no single step holds the GIL for more than about 10 ms: a scan in a worker
thread leaves the event loop to serve other requests (``server/http/request_limits.py``).

Malformed JSON is not their business: the real parser refuses it afterwards with a better
message. The scans are exact for valid JSON, and for a body that is not, exact up to its first
error, which is as far as the parser gets. Bodies in UTF-16 or UTF-32, which ``json.loads``
accepts from bytes, are scanned as the UTF-8 text the parser sees.
"""

from __future__ import annotations

import json

import numpy as np

__all__ = ["has_nonfinite", "json_containers", "json_depth"]

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_OPENING = bytes(b for b in range(256) if b not in b"[{")
_QUOTE = ord('"')
_CHUNK = 256 * 1024
"""Bytes per ``bytes.replace`` call, which holds the GIL: about 3 ms of work at worst."""


def _as_utf8(raw: bytes) -> bytes:
    """``raw`` as UTF-8, decoded the way ``json.loads`` decodes bytes (UTF-16 and UTF-32 too).

    Scanned as they are, the bytes of UTF-16 would hide ``NaN`` (``N\\0a\\0N\\0``) and let a
    character such as U+2200 (``\\0"``) pass for a quote. Text that does not decode is scanned
    as it is: the parser refuses it before looking at its structure.
    """
    encoding = json.detect_encoding(raw)  # looks at the first four bytes only
    if not encoding.startswith("utf-16") and not encoding.startswith("utf-32"):
        return raw
    try:
        return raw.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")
    except UnicodeError:
        return raw


def _unescaped(raw: bytes) -> bytes:
    """``raw`` without its pairs of backslashes, then without its backslash-quotes.

    Pairs first, so that in ``\\\\"`` the quote stays and in ``\\\\\\"`` it goes. What is left of a
    backslash (before a letter, or a lone one at the end) is not a quote and escapes none.
    Done a chunk at a time: a chunk that ends on an odd backslash hands it to the next one.
    """
    parts = []
    carry = b""
    for start in range(0, len(raw), _CHUNK):
        part = (carry + raw[start : start + _CHUNK]).replace(b"\\\\", b"").replace(b'\\"', b"")
        carry = b"\\" if part.endswith(b"\\") else b""
        parts.append(part[: len(part) - len(carry)])
    parts.append(carry)
    return b"".join(parts)


def _outside_strings(raw: bytes) -> bytes:
    """``raw`` with the inside of every string literal removed (each string becomes ``""``).

    An unterminated last string (an odd number of quotes) is kept whole, quote and all, as if
    it were outside: the depth check then counts its brackets and the NaN check its words,
    so the error can only go toward refusing. The parser never sees that text as structure
    (the body is not valid JSON), so counting it cannot hide depth the parser would reach.
    """
    text = _unescaped(raw)
    if b'"' not in text:
        return text
    chars = np.frombuffer(text, np.uint8)
    quotes = chars == _QUOTE
    # 1 from an opening quote up to (not including) its closing one; int32 adds fastest.
    inside = np.cumsum(quotes.view(np.int8), dtype=np.int32) & 1
    keep = (inside == 0) | quotes
    if inside[-1]:
        keep[text.rfind(b'"') :] = True
    return chars[keep].tobytes()


def json_depth(data: bytes | str, at_least: int = 0) -> int:
    """The deepest nesting of arrays and objects in ``data`` (0 for a scalar).

    Returns early with a number <= ``at_least`` when ``data`` cannot be deeper than that
    (fewer opening brackets): the common, cheap case for a caller checking a limit.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else _as_utf8(data)
    opening = raw.count(b"[") + raw.count(b"{")
    if opening <= at_least:
        return min(at_least, opening)
    brackets = np.frombuffer(_outside_strings(raw).translate(None, _NOT_BRACKETS), np.uint8)
    if brackets.size == 0:
        return 0
    # "[" and "{" have bit 1 set, "]" and "}" do not: +1 and -1.
    steps = (brackets & 2).view(np.int8) - np.int8(1)
    return max(0, int(np.cumsum(steps, dtype=np.int32).max()))


def json_containers(data: bytes, at_least: int = 0) -> int:
    """How many arrays and objects ``data`` holds (its opening brackets outside strings).

    Returns early with a number <= ``at_least`` when ``data`` cannot hold more than that.
    """
    raw = _as_utf8(data)
    opening = raw.count(b"[") + raw.count(b"{")
    if opening <= at_least:
        return opening
    return len(_outside_strings(raw).translate(None, _NOT_OPENING))


def has_nonfinite(data: bytes) -> bool:
    """True when ``NaN`` or ``Infinity`` appears outside string literals."""
    raw = _as_utf8(data)
    if b"NaN" not in raw and b"Infinity" not in raw:
        return False
    outside = _outside_strings(raw)
    return b"NaN" in outside or b"Infinity" in outside
