"""Text completions without an engine: request validation, the mapping onto sampling
parameters, the legacy logprobs format, and how several prompts' streams are merged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError
from vllm.logprobs import Logprob

from sampling import to_sampling_params
from server.app import validation_to_api_error
from server.completions.logprobs import legacy_logprobs
from server.completions.protocol import (
    DEFAULT_MAX_TOKENS,
    MAX_CHOICES,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from server.completions.service import merge


def request(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi"} | fields)


def refusal(**fields: Any) -> tuple[str | None, str]:
    """The param and message of the 400 the server answers ``fields`` with."""
    with pytest.raises(ValidationError) as err:
        request(**fields)
    error = validation_to_api_error(err.value.errors())
    assert error.status == 400
    return error.param, str(error)


@pytest.mark.parametrize(
    ("prompt", "prompts"),
    [
        ("hi", ["hi"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_every_prompt_form_is_a_list_of_prompts(prompt: Any, prompts: Any) -> None:
    assert request(prompt=prompt).prompts == prompts


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"prompt": []}, "prompt", "empty list"),
        ({"prompt": [[1], []]}, "prompt", "token-id prompt is empty"),
        ({"prompt": [5, -1]}, "prompt", "negative"),
        ({"prompt": [[5], [-1]]}, "prompt", "negative"),
        ({"prompt": [1, "a"]}, "prompt[1]", ""),
        ({"prompt": 7}, "prompt", ""),
        ({"prompt": ["a"] * (MAX_CHOICES + 1)}, "prompt", "choices"),
        ({"prompt": ["a"] * 5, "n": 8}, "prompt", "40 choices"),
        ({"suffix": "tail"}, "suffix", "not supported"),
        ({"best_of": 3}, "best_of", "must equal n"),
        ({"best_of": 1, "n": 2}, "best_of", "must equal n"),
        ({"grammar_root": "root"}, "grammar_root", "not supported"),
        ({"logprobs": 21}, "logprobs", ""),
        ({"logprobs": True}, "logprobs", ""),
        ({"logprobs": -1}, "logprobs", ""),
        ({"echo": 1}, "echo", ""),
        ({"max_tokens": 0}, "max_tokens", ""),
        ({"messages": []}, "messages", "Unrecognized"),
        ({"stop": ["a"] * 5}, "stop", "at most 4"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(
    fields: dict[str, Any], param: str, words: str
) -> None:
    got_param, message = refusal(**fields)
    assert got_param == param
    assert words in message


def test_what_can_be_honoured_is_accepted() -> None:
    r = request(best_of=2, n=2, suffix="", echo=True, logprobs=0, return_raw_tokens=True)
    assert r.n == 2 and r.best_of == 2 and r.logprobs == 0
    assert request(prompt=["a"] * MAX_CHOICES).prompts == ["a"] * MAX_CHOICES


def test_max_tokens_defaults_to_openais_16() -> None:
    assert request().completion_limit == DEFAULT_MAX_TOKENS == 16
    assert request(max_tokens=None).completion_limit == 16
    assert request(max_tokens=40).completion_limit == 40


def test_service_tier_and_cache_key_are_the_shared_request_fields() -> None:
    r = request(service_tier="flex", prompt_cache_key="k")
    assert r.tier_used == "flex" and r.prompt_cache_key == "k"
    assert request(service_tier="auto").tier_used == "default"
    with pytest.raises(ValidationError):
        request(service_tier="gold")


def test_integer_logprobs_map_onto_the_engine_with_the_prompts_for_echo() -> None:
    r = request(logprobs=0, temperature=0.7, top_k=5, min_tokens=2, ignore_eos=True, seed=3)
    p = to_sampling_params(r, max_tokens=16, stop_token_ids=[2], prompt_logprobs=0)
    assert p.logprobs == 0 and p.prompt_logprobs == 0  # 0: the sampled token only
    assert p.temperature == 0.7 and p.top_k == 5 and p.min_tokens == 2 and p.seed == 3
    assert p.stop_token_ids == []  # ignore_eos runs to max_tokens
    plain = to_sampling_params(request(), max_tokens=16, stop_token_ids=[2])
    assert plain.logprobs is None and plain.prompt_logprobs is None
    assert plain.stop_token_ids == [2]


# ---------------------------------------------------------------- legacy logprobs


class Tokenizer:
    """Decodes token id i as "<i>"."""

    def decode(self, token_ids: list[int], **_: Any) -> str:
        return "".join(f"<{i}>" for i in token_ids)


def test_legacy_logprobs_have_openais_parallel_lists() -> None:
    positions = [
        {7: Logprob(-0.5, rank=2, decoded_token=" a"), 8: Logprob(-0.1, rank=1, decoded_token="b")},
        {9: Logprob(-2.0, rank=1, decoded_token="cd")},
    ]
    got = legacy_logprobs([7, 9], positions, 1, Tokenizer(), offset=10)
    assert got.tokens == [" a", "cd"]
    assert got.token_logprobs == [-0.5, -2.0]
    # The most likely token, and the sampled one beside it when it is not the most likely.
    assert got.top_logprobs == [{"b": -0.1, " a": -0.5}, {"cd": -2.0}]
    assert got.text_offset == [10, 12]


def test_echoed_prompt_logprobs_start_with_null() -> None:
    """The first prompt token has nothing before it: null logprob and alternatives."""
    positions = [None, {4: Logprob(-1.5, rank=3, decoded_token=None)}]
    got = legacy_logprobs([3, 4], positions, 0, Tokenizer(), offset=0)
    assert got.tokens == ["<3>", "<4>"]  # decoded here when the engine did not
    assert got.token_logprobs == [None, -1.5]
    assert got.top_logprobs == [None, {"<4>": -1.5}]  # logprobs=0: the sampled token only
    assert got.text_offset == [0, 3]


def test_ruled_out_tokens_have_a_finite_logprob() -> None:
    positions = [{1: Logprob(float("-inf"), rank=5, decoded_token="x")}]
    got = legacy_logprobs([1], positions, 0, Tokenizer(), offset=0)
    assert got.token_logprobs == [-9999.0]


def test_a_stream_chunk_serializes_as_a_text_completion() -> None:
    logprobs = CompletionLogprobs(
        tokens=["a"], token_logprobs=[None], top_logprobs=[None], text_offset=[0]
    )
    chunk = CompletionResponse(
        id="cmpl-1",
        created=1,
        model="m",
        system_fingerprint="fp",
        choices=[CompletionChoice(index=0, text="a", logprobs=logprobs)],
    )
    wire = chunk.model_dump()
    assert wire["object"] == "text_completion"
    assert "usage" not in wire and "time_info" not in wire  # only on the last chunks
    assert wire["choices"][0]["finish_reason"] is None and "tokens" not in wire["choices"][0]
    assert wire["choices"][0]["logprobs"]["token_logprobs"] == [None]


# ---------------------------------------------------------------- merge


async def numbers(
    label: str, count: int, closed: list[str], delay: float = 0.0
) -> AsyncIterator[str]:
    try:
        for i in range(count):
            await asyncio.sleep(delay)
            yield f"{label}{i}"
    finally:
        closed.append(label)


def test_merge_yields_every_item_with_its_stream() -> None:
    async def go() -> list[tuple[int, str]]:
        closed: list[str] = []
        streams = [numbers("a", 3, closed), numbers("b", 2, closed)]
        return [item async for item in merge(streams)]

    got = asyncio.run(go())
    assert sorted(got) == [(0, "a0"), (0, "a1"), (0, "a2"), (1, "b0"), (1, "b1")]
    assert [i for k, i in got if k == 0] == ["a0", "a1", "a2"]  # each stream in its order


def test_merge_raises_a_streams_error_and_closes_the_others() -> None:
    async def failing() -> AsyncIterator[str]:
        await asyncio.sleep(0.01)
        raise RuntimeError("engine failed")
        yield ""

    async def go() -> list[str]:
        closed: list[str] = []
        merged = merge([numbers("slow", 1000, closed, delay=0.005), failing()])
        with pytest.raises(RuntimeError, match="engine failed"):
            async for _ in merged:
                pass
        return closed

    assert asyncio.run(go()) == ["slow"]  # closed: an engine stream would abort its request


def test_leaving_a_merge_early_closes_every_stream() -> None:
    async def go() -> list[str]:
        closed: list[str] = []
        merged = merge([numbers("a", 1000, closed, 0.001), numbers("b", 1000, closed, 0.001)])
        async for _ in merged:
            break
        await merged.aclose()
        return closed

    assert sorted(asyncio.run(go())) == ["a", "b"]
