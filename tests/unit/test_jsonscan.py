"""server.http.jsonscan on adversarial shapes at the full body limit: the right answers, in
linear time.

Every shape of ``tests/support/scan_shapes.py`` is scanned at the default body limit (4 MiB,
the most a request can bring) within a bound generous for a loaded CI machine: the string regex the
scans used before took hours on the first shape. Small versions of each shape are checked
against Python's parser (the shapes it reads) or a byte-at-a-time reference lexer (the rest),
and so are random short texts.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from server.http.jsonscan import _outside_strings, has_nonfinite, json_containers, json_depth
from server.http.request_limits import json_problem
from server.settings import Settings
from tests.support.scan_shapes import SHAPES, Shape, reference_scan, scanned_bodies

pytestmark = pytest.mark.reliability

LIMIT = Settings().max_request_bytes
MAX_DEPTH = Settings().max_json_depth
BOUND = 2.0
"""Seconds for one scan of 4 MiB: about 0.1 s at worst measured on one core (README "Limits")."""


def parsed(text: bytes) -> tuple[int, bool]:
    """Depth and NaN/Infinity by Python's parser itself."""
    found: list[str] = []

    def depth(value: Any) -> int:
        if isinstance(value, list):
            return 1 + max(map(depth, value), default=0)
        if isinstance(value, dict):
            return 1 + max(map(depth, value.values()), default=0)
        return 0

    value = json.loads(text, parse_constant=found.append, parse_int=len)
    return depth(value), bool(found)


def timed(scan: Any, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = scan(*args)
    return result, time.perf_counter() - started


@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
def test_shape_at_the_body_limit(shape: Shape) -> None:
    for size in (40, 41, 200, 333):  # small versions: an independent answer
        text, k = shape.build(size)
        expected = parsed(text) if shape.valid else reference_scan(text)
        assert expected == (shape.depth(k), shape.nonfinite), (size, text)
        assert (json_depth(text), has_nonfinite(text)) == expected, (size, text)

    # Up to the limit in steps, so that a scan slower than linear fails in seconds (the old
    # regex: about 20 s at 64 KiB) instead of running for hours at 4 MiB.
    for size in (LIMIT // 64, LIMIT // 8, LIMIT):
        text, k = shape.build(size)
        assert size - len(shape.unit) - len(shape.close) < len(text) <= size
        depth, depth_seconds = timed(json_depth, text)
        nonfinite, nonfinite_seconds = timed(has_nonfinite, text)
        problem, problem_seconds = timed(json_problem, text, MAX_DEPTH)
        # The helper itself, which the two scans skip when no byte could matter.
        _, blank_seconds = timed(_outside_strings, text)
        assert (depth, nonfinite) == (shape.depth(k), shape.nonfinite)
        if nonfinite:
            assert problem is not None and problem.code == "invalid_json"
        elif depth > MAX_DEPTH:
            assert problem is not None and problem.code == "json_too_deep"
        else:
            assert problem is None
        seconds = [depth_seconds, nonfinite_seconds, problem_seconds, blank_seconds]
        assert max(seconds) < BOUND, (size, seconds)


ALPHABET = b'"\\[]{}NaIfinty ,:0u'


def test_random_texts_agree_with_the_reference() -> None:
    rng = random.Random(0)
    for _ in range(5000):
        text = bytes(rng.choice(ALPHABET) for _ in range(rng.randrange(40)))
        assert (json_depth(text), has_nonfinite(text)) == reference_scan(text), text


def test_random_json_agrees_with_the_parser() -> None:
    rng = random.Random(1)
    strings = [
        "",
        "a",
        '"',
        "\\",
        '\\"',
        "[",
        "]{",
        "NaN",
        "Infinity",
        "\x00\x1f",
        "é",
        '\\\\"',
        "\ud800",
    ]

    def value(depth: int) -> Any:
        kind = rng.randrange(7 if depth < 6 else 4)
        if kind == 0:
            return rng.choice([0, -1.5, 10**30, True, None])
        if kind == 1:
            return rng.choice([float("nan"), float("inf"), float("-inf")])
        if kind in (2, 3):
            return "".join(rng.choice(strings) for _ in range(rng.randrange(4)))
        if kind in (4, 5):
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(strings): value(depth + 1) for _ in range(rng.randrange(4))}

    for _ in range(2000):
        ascii_only = rng.random() < 0.5
        # Encoded as json.loads decodes bytes: lone surrogates pass.
        text = json.dumps(value(0), ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
        assert (json_depth(text), has_nonfinite(text)) == parsed(text), text


@pytest.mark.parametrize("at_least", [0, 1, 3, 64])
def test_at_least_never_hides_depth_beyond_it(at_least: int) -> None:
    """The early answer (few opening brackets) is only ever given when the depth is within it."""
    for text in (b"[[[]]]", b'["[[[[[[["]', b"{}" * 70, b"[" * 3 + b'"' + b"[" * 80):
        full = json_depth(text)
        early = json_depth(text, at_least)
        assert early == full or (early <= at_least and full <= at_least)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_chunks_change_nothing(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Backslashes are removed a chunk at a time; runs across a boundary are paired the same."""
    import server.http.jsonscan as jsonscan

    rng = random.Random(chunk)
    texts = [bytes(rng.choice(b'\\\\\\"ab') for _ in range(rng.randrange(30))) for _ in range(2000)]
    whole = [t.replace(b"\\\\", b"").replace(b'\\"', b"") for t in texts]
    monkeypatch.setattr(jsonscan, "_CHUNK", chunk)
    assert [jsonscan._unescaped(t) for t in texts] == whole


@pytest.mark.parametrize(
    "encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
)
def test_utf16_and_utf32_are_scanned_as_the_parser_reads_them(encoding: str) -> None:
    """json.loads reads these from bytes; as raw bytes NaN is N\\0a\\0N\\0, and U+2200 holds
    a quote byte (00 22) that would turn the real brackets after it into string contents."""
    nan = '{"s": "\u2200", "t": NaN}'.encode(encoding)
    deep = ('["\u2200", ' + "[" * 100 + '"x"' + "]" * 100 + "]").encode(encoding)
    assert parsed(nan) == (1, True) and parsed(deep) == (101, False)
    assert has_nonfinite(nan) and json_depth(deep) == 101
    assert json_problem(nan, MAX_DEPTH).code == "invalid_json"  # type: ignore[union-attr]
    assert json_problem(deep, MAX_DEPTH).code == "json_too_deep"  # type: ignore[union-attr]


def test_utf16_at_the_body_limit() -> None:
    text = ("[" + '"\\"\u2200[", ' * (LIMIT // 16 - 1) + "NaN]").encode("utf-16")
    assert len(text) <= LIMIT
    problem, seconds = timed(json_problem, text, MAX_DEPTH)
    assert problem is not None and problem.code == "invalid_json"
    assert seconds < BOUND


def test_the_bodies_sent_to_the_server_get_their_codes() -> None:
    """The bodies of tests/e2e/test_scan_shapes.py, at 64 KiB: each refused as it expects."""
    for name, body, code in scanned_bodies(64 * 1024, MAX_DEPTH):
        assert len(body) <= 64 * 1024, name
        problem = json_problem(body, MAX_DEPTH)
        assert problem is not None and problem.code == code, name


def test_a_lone_surrogate_in_tool_arguments_does_not_break_the_scan() -> None:
    """Tool-call arguments arrive as a str that JSON's \\ud800 escape can make unencodable as
    UTF-8; the depth scan must still answer (it used to raise the codec's own error)."""
    assert json_depth('[{"a": "\ud800"}]') == 2


def test_containers_are_counted_as_the_parser_builds_them() -> None:
    rng = random.Random(2)
    strings = ["", "[", "]{", '"[', "\\", '\\"{', "é", "\ud800"]

    def value(depth: int) -> Any:
        kind = rng.randrange(5 if depth < 6 else 2)
        if kind == 0:
            return rng.choice([0, -1.5, True, None])
        if kind == 1:
            return "".join(rng.choice(strings) for _ in range(rng.randrange(4)))
        if kind in (2, 3):
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(strings): value(depth + 1) for _ in range(rng.randrange(4))}

    def count(node: Any) -> int:
        if isinstance(node, list):
            return 1 + sum(map(count, node))
        if isinstance(node, dict):
            return 1 + sum(map(count, node.values()))
        return 0

    for _ in range(1000):
        node = value(0)
        text = json.dumps(node, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        assert json_containers(text) == count(node), text
        assert json_containers(text, at_least=10**6) <= 10**6


def test_a_body_of_too_many_containers_is_refused_before_parsing() -> None:
    body = json.dumps({"prompt": [[1]] * 1000}).encode()  # 1,002 with the list and object
    assert json_problem(body, MAX_DEPTH, 1002) is None
    problem = json_problem(body, MAX_DEPTH, 1001)
    assert problem is not None and problem.code == "json_too_complex"
    assert "1002 JSON arrays and objects; at most 1001" in problem.message
    brackets_in_strings = json.dumps({"text": "[{" * 5000}).encode()
    assert json_problem(brackets_in_strings, MAX_DEPTH, 1000) is None
