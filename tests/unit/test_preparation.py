"""The model-dependent checks of request preparation, without an engine."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from server.chat.preparation import check_prompt_size
from server.chat.protocol import ChatCompletionRequest
from server.common.preparation import tokenize
from server.errors import BadRequestError
from server.models.formats import Segment, encode_segments
from tests.support.loop_ticks import loop_ticks

MODEL = SimpleNamespace(config=SimpleNamespace(context_length=100), longest_token_bytes=4)


def request(text: str) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": text}])


def test_prompt_that_cannot_fit_is_refused_before_tokenizing() -> None:
    check_prompt_size(request("x" * 400), MODEL)  # 400 bytes may be 100 tokens
    with pytest.raises(BadRequestError) as err:
        check_prompt_size(request("x" * 401), MODEL)
    assert err.value.param == "messages" and err.value.code == "context_length_exceeded"


def test_prompt_size_counts_bytes_not_characters() -> None:
    with pytest.raises(BadRequestError):
        check_prompt_size(request("é" * 201), MODEL)  # 402 bytes


def test_a_long_prompt_is_tokenized_off_the_event_loop(smol_tokenizer: Any) -> None:
    """Same ids either way; while 100k tokens are encoded the loop keeps running."""
    short = [Segment("<|im_start|>", special=True), Segment("user\nHello")]
    long = [*short, Segment(" the quick brown fox jumps over the lazy dog" * 11_000)]

    async def scenario() -> tuple[list[int], list[int], int]:
        async with loop_ticks() as ticks:
            ids = await tokenize(long, smol_tokenizer)
        return ids, await tokenize(short, smol_tokenizer), ticks.count

    ids, short_ids, ticks = asyncio.run(scenario())
    assert ids == encode_segments(long, smol_tokenizer) and len(ids) > 90_000
    assert short_ids == encode_segments(short, smol_tokenizer)
    assert ticks > 10  # the loop ran while the thread tokenized (inline: 0)
