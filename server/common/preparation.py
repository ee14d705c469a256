"""Checks and helpers that chat and completions preparation share: tokenizing off the event
loop, the prompt-size bound, fitting ``max_tokens`` into the context, and what only the model
knows (vocabulary, room left)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from server.common.protocol import GenerationRequest
from server.errors import BadRequestError
from server.models.formats import Segment, encode_segments
from server.models.formats.base import TokenizerLike
from server.models.pool import ServedModel

__all__ = [
    "INLINE_PROMPT_CHARS",
    "check_engine_limits",
    "check_text_size",
    "envelope",
    "fit_max_tokens",
    "off_loop",
    "tokenize",
]

T = TypeVar("T")

INLINE_PROMPT_CHARS = 4096
"""Prompts of up to this many characters (or tokens, to decode) are handled on the event loop
(about a millisecond); longer ones in a thread. The tokenizer releases the GIL, and Llama 3.1's
context holds prompts of 100k tokens that take 0.2 s or more: on the loop they would stall
every stream."""

# Two threads: a long prompt does not hold up the next one; each thread borrows its own copy
# of the tokenizer from vLLM's pool, so more threads would mean more copies in memory.
_tokenizing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenize")


async def off_loop(size: int, work: Callable[..., T], *args: object) -> T:
    """``work(*args)``: on the event loop when ``size`` is at most INLINE_PROMPT_CHARS,
    else in a tokenizing thread."""
    if size <= INLINE_PROMPT_CHARS:
        return work(*args)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_tokenizing, work, *args)


async def tokenize(segments: list[Segment], tokenizer: TokenizerLike) -> list[int]:
    """``encode_segments`` that keeps the event loop free for long prompts."""
    size = sum(len(s.text) for s in segments)
    return await off_loop(size, encode_segments, segments, tokenizer)


def check_text_size(size: int, model: ServedModel, *, param: str, what: str) -> None:
    """Refuse ``size`` bytes of prompt text that cannot fit before tokenizing it: megabytes
    of text would occupy a tokenizing thread (and a core) for seconds."""
    limit = model.config.context_length * model.longest_token_bytes
    if size > limit:
        raise BadRequestError(
            f"The {what} {size} bytes of text, more than any prompt that fits the "
            f"model's context of {model.config.context_length} tokens can hold.",
            param=param,
            code="context_length_exceeded",
        )


def fit_max_tokens(
    wanted: int | None, prompt_len: int, model: ServedModel, *, param: str, prompt_param: str
) -> int:
    """The tokens that may be generated after a prompt of ``prompt_len`` tokens: ``wanted``
    (named ``param``), or the rest of the context when None; a 400 when it does not fit."""
    context = model.config.context_length
    room = context - prompt_len
    if room < 1:
        raise BadRequestError(
            f"The prompt is {prompt_len} tokens, which leaves no room in the model's "
            f"context of {context} tokens.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    if wanted is None:
        return room
    if wanted > room:
        raise BadRequestError(
            f"{param} is {wanted}, but the prompt is {prompt_len} tokens and the model's "
            f"context is {context}: at most {room} tokens can be generated.",
            param=param,
            code="context_length_exceeded",
        )
    return wanted


def check_engine_limits(request: GenerationRequest, model: ServedModel, max_tokens: int) -> None:
    """What only the model knows (vocabulary, room left): vLLM would refuse these with an
    exception that is not the client's error envelope."""
    vocab = len(model.engine.tokenizer)
    outside = [k for k in request.logit_bias or {} if int(k) >= vocab]
    if outside:
        raise BadRequestError(
            f"logit_bias names token ids outside the vocabulary of {vocab} tokens: "
            f"{', '.join(outside[:5])}.",
            param="logit_bias",
        )
    if (request.min_tokens or 0) > max_tokens:
        raise BadRequestError(
            f"min_tokens is {request.min_tokens}, more than the {max_tokens} tokens "
            "that may be generated (max_tokens or the rest of the context).",
            param="min_tokens",
        )
    if request.temperature == 0 and (request.n or 1) > 1:
        raise BadRequestError(
            "n must be 1 with temperature 0: greedy decoding gives one answer.",
            param="n",
        )


def envelope(
    request_id: str, arrival: float, model: ServedModel, request: GenerationRequest
) -> dict[str, Any]:
    """The fields every response and chunk of a request carries."""
    tier = request.service_tier
    return {
        "id": request_id,
        "created": int(arrival),
        "model": model.id,
        "system_fingerprint": f"fp_{model.id}",
        # Cerebras echoes the tier asked for, and with auto names the one used.
        "service_tier": tier,
        "service_tier_used": request.tier_used if tier == "auto" else None,
    }
