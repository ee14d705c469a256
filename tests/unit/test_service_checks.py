"""The service's model-dependent checks, without an engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from server.errors import BadRequestError
from server.protocol import ChatCompletionRequest
from server.service import ChatService

MODEL = SimpleNamespace(config=SimpleNamespace(context_length=100), longest_token_bytes=4)


def request(text: str) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": text}])


def test_prompt_that_cannot_fit_is_refused_before_tokenizing() -> None:
    ChatService._check_prompt_size(request("x" * 400), MODEL)  # 400 bytes may be 100 tokens
    with pytest.raises(BadRequestError) as err:
        ChatService._check_prompt_size(request("x" * 401), MODEL)
    assert err.value.param == "messages" and err.value.code == "context_length_exceeded"


def test_prompt_size_counts_bytes_not_characters() -> None:
    with pytest.raises(BadRequestError):
        ChatService._check_prompt_size(request("é" * 201), MODEL)  # 402 bytes
