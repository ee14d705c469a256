"""Bad requests get a 400 in the OpenAI envelope naming the parameter; the server stays up."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
MSGS = [{"role": "user", "content": "hi"}]

CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("temperature too high", {"temperature": 2.0}, "temperature"),
    ("top_p zero", {"top_p": 0}, "top_p"),
    ("n too large", {"n": 9}, "n"),
    ("five stops", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("empty stop", {"stop": [""]}, "stop"),
    ("max_tokens zero", {"max_tokens": 0}, "max_tokens"),
    ("max_tokens beyond context", {"max_tokens": 10**6}, "max_tokens"),
    ("top_logprobs 21", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("logit_bias word key", {"logit_bias": {"hello": 5}}, "logit_bias"),
    ("logit_bias out of range", {"logit_bias": {"42": 101}}, "logit_bias.42"),
    ("frequency_penalty", {"frequency_penalty": 3}, "frequency_penalty"),
    ("unknown field", {"bogus_field": 1}, "bogus_field"),
    ("empty messages", {"messages": []}, "messages"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("ends with assistant", {"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
    ("tool message without id", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ("temperature as text", {"temperature": "hot"}, "temperature"),
    ("missing model", {"model": None}, "model"),
]


@pytest.mark.parametrize(("name", "patch", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_request(smol_url: str, name: str, patch: dict[str, Any], param: str | None) -> None:
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 4} | patch
    body = {k: v for k, v in body.items() if v is not None}
    r = httpx.post(f"{smol_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert "Traceback" not in r.text


def test_invalid_json_body(smol_url: str) -> None:
    r = httpx.post(
        f"{smol_url}/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_path_and_method(smol_url: str) -> None:
    assert httpx.get(f"{smol_url}/v1/nothing").json()["error"]["code"] == "not_found"
    r = httpx.get(f"{smol_url}/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_server_still_serves_after_bad_input(smol_url: str) -> None:
    r = httpx.post(
        f"{smol_url}/v1/chat/completions",
        json={"model": MODEL, "messages": MSGS, "max_tokens": 2},
        timeout=60,
    )
    assert r.status_code == 200
