"""Chat completions end to end: the real server and engine on smollm2-135m, the official SDKs."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import httpx
import msgpack
import openai
import pytest
from cerebras.cloud.sdk import Cerebras

from tests.support.timing import assert_measured_time_info

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]


def test_plain_answer_has_openai_and_cerebras_fields(client: openai.OpenAI) -> None:
    sent_at = time.time()
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0)
    received_at = time.time()
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.model == MODEL and r.system_fingerprint
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 0 < r.usage.completion_tokens <= 24
    assert_measured_time_info(
        r.model_extra["time_info"],
        completion_tokens=r.usage.completion_tokens,
        sent_at=sent_at,
        received_at=received_at,
        created=r.created,
    )


def test_prompt_tokens_count_the_rendered_prompt(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    longer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write one sentence about the sea. " * 3}],
        max_tokens=1,
    )
    # "Write one sentence about the sea." is 7 tokens in SmolLM2's vocabulary, plus spaces.
    assert longer.usage.prompt_tokens - short.usage.prompt_tokens >= 14
    assert short.usage.completion_tokens == 1


def test_max_tokens_ends_in_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=5, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_greedy_is_repeatable_and_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def run(**kw: object) -> str:
        r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=20, **kw)
        return r.choices[0].message.content or ""

    assert run(temperature=0) == run(temperature=0)
    assert run(temperature=1.0, seed=1234) == run(temperature=1.0, seed=1234)
    outputs = {run(temperature=1.5, seed=s) for s in range(4)}
    assert len(outputs) > 1, "different seeds should give different samples"


def test_stop_sequence_is_never_returned(client: openai.OpenAI) -> None:
    base = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=30, temperature=0)
    text = base.choices[0].message.content or ""
    words = text.split()
    assert len(words) > 3, text
    stop = words[2]
    cut = text[: text.index(stop)]
    r = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=30, temperature=0, stop=[stop, "zzzz"]
    )
    assert r.choices[0].message.content == cut
    assert r.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=30, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut


def test_n_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=8, n=3, temperature=1.0, seed=7
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content for c in r.choices)
    # Usage counts the tokens of every choice.
    assert 3 <= r.usage.completion_tokens <= 24


def test_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one (bf16 logits can tie).
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob)
        assert token.logprob <= 0


def test_stream_shape(client: openai.OpenAI) -> None:
    sent_at = time.time()
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    received_at = time.time()
    assert chunks[0].choices[0].delta.role == "assistant"
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1
    assert final[0].usage is None  # in the usage chunk only, so it is not counted twice
    usage_only = chunks[-1]
    assert usage_only.choices == [] and usage_only.usage.completion_tokens > 0
    assert_measured_time_info(
        final[0].model_extra["time_info"],
        completion_tokens=usage_only.usage.completion_tokens,
        sent_at=sent_at,
        received_at=received_at,
        created=final[0].created,
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, temperature=0
    )
    assert text == plain.choices[0].message.content
    assert usage_only.usage == plain.usage


def test_raw_stream_ends_with_done(smol_url: str) -> None:
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{smol_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])


def test_cerebras_sdk_plain_and_stream(cerebras: Cerebras) -> None:
    sent_at = time.time()
    r = cerebras.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10)
    received_at = time.time()
    assert r.choices[0].message.content
    assert r.usage.completion_tokens > 0
    # The Cerebras SDK's own TimeInfo type reads the same five fields.
    assert_measured_time_info(
        r.time_info,
        completion_tokens=r.usage.completion_tokens,
        sent_at=sent_at,
        received_at=received_at,
        created=r.created,
    )
    text = ""
    for chunk in cerebras.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=10, stream=True
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text


def test_models_health_and_warming(smol_url: str, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{smol_url}/health").status_code == 200
    assert httpx.get(f"{smol_url}/v1/tcp_warming").status_code == 200


def test_unknown_model_is_404_listing_loaded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="llama3.1-405b", messages=HELLO)
    body = err.value.body
    assert body["code"] == "model_not_found" and MODEL in body["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_ignored_openai_fields_are_accepted(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=2,
        store=False,
        metadata={"a": "b"},
        service_tier="auto",
        user="alice",
    )
    assert r.choices[0].message.content is not None


def test_livekit_cerebras_wire_gets_the_json_answer(smol_url: str) -> None:
    """What livekit-plugins-cerebras 1.8.9 sends by default (its ``_CerebrasClient``: the
    request as MessagePack, then gzip at level 5, with ``model`` a served id) gets the same
    answer as the JSON request, and a gzip bomb a 413."""
    payload = {
        "model": MODEL,
        "messages": HELLO,
        "max_completion_tokens": 24,
        "temperature": 0.7,
        "seed": 11,
        "user": "livekit-agent",
    }
    wire = gzip.compress(msgpack.packb(payload), compresslevel=5)
    headers = {"Content-Type": "application/vnd.msgpack", "Content-Encoding": "gzip"}
    with httpx.Client(base_url=smol_url, timeout=60) as http:
        packed = http.post("/v1/chat/completions", content=wire, headers=headers)
        plain = http.post("/v1/chat/completions", json=payload)
        assert packed.status_code == plain.status_code == 200, packed.text
        assert packed.json()["choices"] == plain.json()["choices"]
        assert packed.json()["usage"] == plain.json()["usage"]
        bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        body = bomb.compress(b" " * (64 * 2**20)) + bomb.flush()  # 64 MiB inflated, 64 KiB sent
        r = http.post("/v1/chat/completions", content=body, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
