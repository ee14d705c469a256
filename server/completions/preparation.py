"""Everything before the engine for a text completion: its prompts checked against the model
and tokenized (or their token ids checked against the vocabulary), and its fields mapped onto
vLLM's sampling parameters, with the checks chat makes too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm import SamplingParams

from sampling import to_sampling_params
from server.common.preparation import (
    check_engine_limits,
    check_text_size,
    envelope,
    fit_max_tokens,
    off_loop,
)
from server.completions.protocol import CompletionRequest
from server.errors import BadRequestError
from server.models.pool import ModelPool, ServedModel

__all__ = ["PreparedCompletion", "Prompt", "prepare_completion"]


@dataclass
class Prompt:
    """One prompt as the engine gets it, and as echo and text offsets see it."""

    ids: list[int]
    text: str
    """The prompt's text: as sent, or decoded from its ids when echo or logprobs need it."""


@dataclass
class PreparedCompletion:
    """A validated completions request, ready for the engine: one engine request a prompt."""

    request: CompletionRequest
    model: ServedModel
    request_id: str
    prompts: list[Prompt]
    params: SamplingParams
    arrival: float
    """When the request arrived (wall clock): ``created`` and ``time_info.total_time`` count
    from here."""

    @property
    def envelope(self) -> dict[str, Any]:
        return envelope(self.request_id, self.arrival, self.model, self.request)


async def prepare_completion(
    request: CompletionRequest, request_id: str, *, arrival: float, pool: ModelPool
) -> PreparedCompletion:
    model = pool.get(request.model)
    prompts = [await _prompt(p, request, model) for p in request.prompts]
    max_tokens = request.completion_limit
    for prompt in prompts:  # the same limit must fit after every prompt
        fit_max_tokens(
            max_tokens, len(prompt.ids), model, param="max_tokens", prompt_param="prompt"
        )
    check_engine_limits(request, model, max_tokens)
    echo_logprobs = request.echo and request.logprobs is not None
    params = to_sampling_params(
        request,
        max_tokens=max_tokens,
        stop_token_ids=model.stop_token_ids,
        prompt_logprobs=request.logprobs if echo_logprobs else None,
    )
    return PreparedCompletion(request, model, request_id, prompts, params, arrival)


async def _prompt(
    prompt: str | list[int], request: CompletionRequest, model: ServedModel
) -> Prompt:
    tokenizer = model.engine.tokenizer
    if isinstance(prompt, str):
        check_text_size(len(prompt.encode()), model, param="prompt", what="prompt holds")
        # As vLLM's completions: the tokenizer adds its BOS token, and special-token spellings
        # in the text are those tokens (the prompt is the caller's raw model input).
        ids = await off_loop(len(prompt), tokenizer.encode, prompt)
        if not ids:
            raise BadRequestError("The prompt is empty: it has no tokens.", param="prompt")
        return Prompt(ids, prompt)
    vocab = len(tokenizer)
    outside = sorted({i for i in prompt if i >= vocab})
    if outside:
        raise BadRequestError(
            f"The prompt holds token ids outside the vocabulary of {vocab} tokens: "
            f"{', '.join(map(str, outside[:5]))}.",
            param="prompt",
        )
    text = ""
    if request.echo or request.logprobs is not None:
        text = await off_loop(len(prompt), tokenizer.decode, prompt)
    return Prompt(prompt, text)
