"""Adversarial shapes of JSON text for the scans of ``server/http/jsonscan.py``, at any size.

Each shape is a way to make a scan slow if it backtracks or runs Python per byte, with the
answers the scans must give at every size. On the first one, the string regex the scans used
before took quadratic time: 8 s for 40 KB, about a day at the 4 MiB body limit.
``tests/unit/test_jsonscan.py`` checks them at the body limit; ``tests/e2e/test_scan_shapes.py``
sends them to the real server. ``python -m tests.support.scan_shapes`` times the request
limits' scan (``json_problem``) on each, at the default limits.

Shapes marked ``valid`` are JSON as Python's ``json`` reads it (``NaN`` included); the others
are not, and their answers follow ``server.http.jsonscan``'s rule: an unterminated last string
counts as outside strings (its brackets count, its ``NaN`` is found).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["SHAPES", "Shape", "reference_scan", "scanned_bodies"]


@dataclass(frozen=True)
class Shape:
    """``head + unit * k + middle + close * k + tail``, with its depth and verdict for ``k``."""

    id: str
    head: bytes
    unit: bytes
    tail: bytes = b""
    middle: bytes = b""
    close: bytes = b""
    depth: Callable[[int], int] = lambda k: 1
    nonfinite: bool = False
    valid: bool = True

    def repeats(self, size: int) -> int:
        """The largest ``k`` whose text is at most ``size`` bytes."""
        fixed = len(self.head) + len(self.middle) + len(self.tail)
        return (size - fixed) // (len(self.unit) + len(self.close))

    def build(self, size: int) -> tuple[bytes, int]:
        """The text of at most ``size`` bytes (within one unit of it), and its ``k``."""
        k = self.repeats(size)
        return self.head + self.unit * k + self.middle + self.close * k + self.tail, k


SHAPES = [
    # Escaped quotes: the string regex's quadratic case.
    Shape("escape_storm_unterminated", b'"', b'\\"', depth=lambda k: 0, valid=False),
    Shape("escape_storm_closed", b'["', b'\\"', b'"]'),
    Shape("escape_storm_then_nan", b'["', b'\\"', b'", NaN]', nonfinite=True),
    Shape("escape_storm_with_brackets", b'["', b'\\"[{', b'"]'),
    # Unterminated strings: everything after the last quote counts as outside.
    Shape("unterminated_string", b'["', b"abc ", valid=False),
    Shape("unterminated_brackets", b'["', b"[", depth=lambda k: k + 1, valid=False),
    Shape("unterminated_nan", b'{"a": "', b"NaN ", nonfinite=True, valid=False),
    # Brackets that are inside strings count for nothing.
    Shape("brackets_in_one_string", b'["', b"[{", b'"]'),
    Shape("brackets_in_many_strings", b"[", b'"[[[{{{",', b"0]"),
    # Runs of backslashes: even runs leave the closing quote, odd runs escape it.
    Shape("backslashes_even", b'["', b"\\\\", b'"]'),
    Shape("backslashes_odd", b'["', b"\\\\", b'\\""]'),
    Shape("backslashes_odd_unterminated", b'["', b"\\\\", b'\\"]', valid=False),
    Shape("backslash_pairs_and_quotes", b"[", b'"\\\\",', b"0]"),
    Shape("lone_backslash_at_the_end", b"[[[", b"\\\\", b"\\", depth=lambda k: 3, valid=False),
    # Numbers: a 4 MiB one (too many digits for Python's int, not for the scans).
    Shape("huge_integer", b"[", b"7", b"]"),
    Shape("huge_bare_integer", b"", b"7", depth=lambda k: 0),
    Shape("huge_fraction", b"[0.", b"1", b"e5]"),
    # \u escapes, including those of a quote and a backslash (not delimiters, not escapes).
    Shape("unicode_escapes", b'["', b"\\u0041", b'"]'),
    Shape("unicode_escaped_quotes", b'["', b"\\u0022[", b'"]'),
    Shape(
        "unicode_escaped_backslash", b'["\\u005c", ', b"[", b"]", close=b"]", depth=lambda k: k + 1
    ),
    # Deep nesting.
    Shape("deep_unclosed", b"", b"[", depth=lambda k: k, valid=False),
    Shape("deep_closed", b"", b"[", close=b"]", depth=lambda k: k),
    Shape("deep_objects", b"", b'{"a":', middle=b"0", close=b"}", depth=lambda k: k),
    Shape(
        "deep_between_strings", b"[", b'"[",[', b"]", middle=b"0", close=b"]", depth=lambda k: k + 1
    ),
    # NaN and Infinity inside and outside strings.
    Shape("nan_mixed", b"[", b'"NaN", Infinity, ', b"0]", nonfinite=True),
    Shape("nan_inside_strings_only", b"[", b'"NaN Infinity -Infinity", ', b"0]"),
    Shape("nan_after_many_strings", b"[", b'"NaN", ', b"-Infinity]", nonfinite=True),
    Shape("nan_split_by_strings", b"[", b'N"x"aN, ', b"0]", valid=False),
    # Many short strings: one piece of work per string.
    Shape("many_short_strings", b"[", b'"ab",', b'""]'),
    Shape("many_empty_strings", b"[", b'"",', b'""]'),
    # Quotes alone, and quotes between brackets.
    Shape("quote_storm_even", b"", b'""', depth=lambda k: 0, valid=False),
    Shape("quote_storm_odd", b'"', b'""', depth=lambda k: 0, valid=False),
    Shape("quotes_and_brackets", b"", b'["', depth=lambda k: (k + 1) // 2, valid=False),
    # Bytes that are not UTF-8 (the parser refuses them; the scans must not care).
    Shape("not_utf8", b'["', b"\xff\xfe\x80\\\xc3", b'"]', valid=False),
]


def reference_scan(text: bytes) -> tuple[int, bool]:
    """Depth and whether ``NaN``/``Infinity`` is outside strings, one byte at a time as JSON's
    lexer reads: slow, for small texts. An unterminated last string counts as outside, as in
    ``server.http.jsonscan``; there a backslash takes the next backslash or quote with it."""
    depth = deepest = 0
    outside = bytearray()
    i = 0

    def at_outside(c: int) -> None:
        nonlocal depth, deepest
        if c in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in b"]}":
            depth -= 1
        outside.append(c)

    while i < len(text):
        c = text[i]
        if c == ord("\\") and i + 1 < len(text) and text[i + 1] in b'\\"':
            i += 2  # outside strings (not JSON): as jsonscan drops the pair
        elif c != ord('"'):
            at_outside(c)
            i += 1
        else:
            end = i + 1
            while end < len(text) and text[end] != ord('"'):
                end += 2 if text[end] == ord("\\") else 1
            if end < len(text):
                outside += b'""'
                i = end + 1
            else:  # unterminated: the quote and the rest count as outside
                at_outside(c)
                i += 1
                while i < len(text):
                    if text[i] == ord("\\") and i + 1 < len(text) and text[i + 1] in b'\\"':
                        i += 2
                    else:
                        at_outside(text[i])
                        i += 1
    return max(0, deepest), b"NaN" in outside or b"Infinity" in outside


def scanned_bodies(size: int, max_depth: int) -> Iterator[tuple[str, bytes, str]]:
    """Each shape as a body of at most ``size`` bytes that the request limits' scans must read
    whole, twice: with ``NaN`` after it (outside strings, found only by reading everything
    before it) and behind ``max_depth + 1`` opening brackets (so the depth scan runs to the
    end). Yields (name, body, the error code ``json_problem`` answers)."""
    for shape in SHAPES:
        text, _ = shape.build(size - 3)
        yield f"{shape.id}+NaN", text + b"NaN", "invalid_json"
        text, _ = shape.build(size - max_depth - 1)
        code = "invalid_json" if shape.nonfinite else "json_too_deep"
        yield f"[*{max_depth + 1}+{shape.id}", b"[" * (max_depth + 1) + text, code


def main() -> None:
    """Print json_problem's time on every body of ``scanned_bodies`` at the default limits
    (median of 5 runs each), the slowest last."""
    from server.http.request_limits import json_problem
    from server.settings import Settings

    settings = Settings()
    times = []
    for name, body, code in scanned_bodies(settings.max_request_bytes, settings.max_json_depth):
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            problem = json_problem(body, settings.max_json_depth, settings.max_json_containers)
            runs.append(time.perf_counter() - started)
        assert problem is not None and problem.code == code, name
        times.append((statistics.median(runs), name))
    for seconds, name in sorted(times):
        print(f"{1000 * seconds:7.1f} ms  {name}")
    print(f"{len(times)} bodies of {settings.max_request_bytes} bytes; the slowest above")


if __name__ == "__main__":
    main()
