"""A client that goes away has its request aborted in the engine at once."""

from __future__ import annotations

import re
import time

import httpx
import pytest

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
LONG = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Count to ten thousand."}],
    "max_tokens": 4000,
    "ignore_eos": True,
}


def engine_requests(url: str) -> int:
    text = httpx.get(f"{url}/metrics").text
    pattern = rf'^llama_serve_engine_requests\{{model_name="{MODEL}"\}} (\S+)$'
    match = re.search(pattern, text, re.M)
    assert match, text[:2000]
    return int(float(match.group(1)))


def wait_for(predicate, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_stream_disconnect_aborts(smol_url: str) -> None:
    with httpx.stream(
        "POST", f"{smol_url}/v1/chat/completions", json=LONG | {"stream": True}, timeout=60
    ) as r:
        lines = r.iter_lines()
        for _ in range(5):
            next(lines)
        assert engine_requests(smol_url) == 1
    assert wait_for(lambda: engine_requests(smol_url) == 0, timeout=10)


def test_non_stream_disconnect_aborts(smol_url: str) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{smol_url}/v1/chat/completions", json=LONG, timeout=3)
    assert wait_for(lambda: engine_requests(smol_url) == 0, timeout=10)
    # The engine is free again: a short request is served at once.
    r = httpx.post(f"{smol_url}/v1/chat/completions", json=LONG | {"max_tokens": 3}, timeout=30)
    assert r.status_code == 200
