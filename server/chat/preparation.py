"""Everything before the engine: a request is checked against its model, its prompt rendered
and tokenized, and its fields mapped onto vLLM's sampling parameters."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from vllm import SamplingParams

from grammars import Constraint, build_constraint
from sampling import to_sampling_params
from server.chat.protocol import ChatCompletionRequest
from server.errors import BadRequestError
from server.models.formats import Segment, encode_segments
from server.models.formats.base import TokenizerLike
from server.models.pool import ModelPool, ServedModel

__all__ = ["INLINE_PROMPT_CHARS", "Prepared", "check_prompt_size", "prepare", "tokenize"]

INLINE_PROMPT_CHARS = 4096
"""Prompts of up to this many characters are tokenized on the event loop (about a millisecond);
longer ones in a thread. The tokenizer releases the GIL, and Llama 3.1's context holds prompts
of 100k tokens that take 0.2 s or more: on the loop they would stall every stream."""

# Two threads: a long prompt does not hold up the next one; each thread borrows its own copy
# of the tokenizer from vLLM's pool, so more threads would mean more copies in memory.
_tokenizing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenize")


async def tokenize(segments: list[Segment], tokenizer: TokenizerLike) -> list[int]:
    """``encode_segments`` that keeps the event loop free for long prompts."""
    if sum(len(s.text) for s in segments) <= INLINE_PROMPT_CHARS:
        return encode_segments(segments, tokenizer)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_tokenizing, encode_segments, segments, tokenizer)


@dataclass
class Prepared:
    """A validated request, ready for the engine."""

    request: ChatCompletionRequest
    model: ServedModel
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    constraint: Constraint | None = None
    arrival: float = field(default_factory=time.time)
    """When the request arrived (wall clock): ``created`` and ``time_info.total_time`` count
    from here."""

    @property
    def envelope(self) -> dict[str, Any]:
        """The fields every response and chunk of this request carries."""
        return {
            "id": self.request_id,
            "created": int(self.arrival),
            "model": self.model.id,
            "system_fingerprint": f"fp_{self.model.id}",
            # Cerebras echoes the tier asked for, and with auto names the one used.
            "service_tier": self.request.service_tier,
            "service_tier_used": (
                self.request.tier_used if self.request.service_tier == "auto" else None
            ),
        }

    @property
    def wants_tools(self) -> bool:
        return bool(self.request.tools) and self.request.effective_tool_choice != "none"


async def prepare(
    request: ChatCompletionRequest,
    request_id: str,
    *,
    arrival: float,
    pool: ModelPool,
    grammar_backend: str,
) -> Prepared:
    """Check the request against its model, render and tokenize its prompt, and map its
    fields onto vLLM's sampling parameters: everything before the engine."""
    model = pool.get(request.model)
    _check_conversation(request)
    check_prompt_size(request, model)
    constraint = await _constraint(request, model, grammar_backend)
    tools = request.tools if request.effective_tool_choice != "none" else None
    segments = model.chat_format.render(request.messages, tools)
    prompt_ids = await tokenize(segments, model.engine.tokenizer)
    max_tokens = _max_tokens(request, model, len(prompt_ids))
    _check_engine_limits(request, model, max_tokens)
    params = to_sampling_params(
        request,
        max_tokens=max_tokens,
        stop_token_ids=model.stop_token_ids,
        structured_outputs=constraint.structured_outputs if constraint else None,
    )
    return Prepared(request, model, request_id, prompt_ids, params, constraint, arrival)


def _check_conversation(request: ChatCompletionRequest) -> None:
    last = request.messages[-1]
    if last.role == "assistant":
        raise BadRequestError(
            "The last message must not be an assistant message: "
            "continuing an assistant turn is not supported.",
            param="messages",
        )


def check_prompt_size(request: ChatCompletionRequest, model: ServedModel) -> None:
    """Refuse a prompt that cannot fit before tokenizing it: megabytes of text would
    occupy a tokenizing thread (and a core) for seconds."""
    size = sum(
        len(m.text.encode()) + sum(len(c.function.arguments) for c in m.tool_calls or [])
        for m in request.messages
    )
    limit = model.config.context_length * model.longest_token_bytes
    if size > limit:
        raise BadRequestError(
            f"The messages hold {size} bytes of text, more than any prompt that fits the "
            f"model's context of {model.config.context_length} tokens can hold.",
            param="messages",
            code="context_length_exceeded",
        )


async def _constraint(
    request: ChatCompletionRequest, model: ServedModel, backend: str
) -> Constraint | None:
    if request.stream and request.response_format and request.response_format.type != "text":
        raise BadRequestError(
            "JSON mode (response_format) is not compatible with stream: set stream to false.",
            param="stream",
            code="unsupported_parameter",
        )
    constraint = build_constraint(request, backend=backend, syntax=model.chat_format.tool_calls)
    if constraint is not None and model.grammar is not None:
        await model.grammar.check(constraint)
    return constraint


def _max_tokens(request: ChatCompletionRequest, model: ServedModel, prompt_len: int) -> int:
    context = model.config.context_length
    room = context - prompt_len
    if room < 1:
        raise BadRequestError(
            f"The prompt is {prompt_len} tokens, which leaves no room in the model's "
            f"context of {context} tokens.",
            param="messages",
            code="context_length_exceeded",
        )
    wanted = request.completion_limit
    if wanted is None:
        return room
    if wanted > room:
        name = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise BadRequestError(
            f"{name} is {wanted}, but the prompt is {prompt_len} tokens and the model's "
            f"context is {context}: at most {room} tokens can be generated.",
            param=name,
            code="context_length_exceeded",
        )
    return wanted


def _check_engine_limits(
    request: ChatCompletionRequest, model: ServedModel, max_tokens: int
) -> None:
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
