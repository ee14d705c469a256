"""Everything before the engine: a request is checked against its model, its prompt rendered
and tokenized, and its fields mapped onto vLLM's sampling parameters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from vllm import SamplingParams

from grammars import Constraint, build_constraint
from sampling import to_sampling_params
from server.chat.protocol import ChatCompletionRequest
from server.common.preparation import (
    check_engine_limits,
    check_text_size,
    envelope,
    fit_max_tokens,
    tokenize,
)
from server.errors import BadRequestError
from server.models.pool import ModelPool, ServedModel

__all__ = ["Prepared", "check_prompt_size", "prepare"]


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
        return envelope(self.request_id, self.arrival, self.model, self.request)

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
    max_tokens = fit_max_tokens(
        request.completion_limit,
        len(prompt_ids),
        model,
        param="max_completion_tokens" if request.max_completion_tokens else "max_tokens",
        prompt_param="messages",
    )
    check_engine_limits(request, model, max_tokens)
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
    check_text_size(size, model, param="messages", what="messages hold")


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
