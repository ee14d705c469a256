"""Turn a validated chat or completions request into vLLM ``SamplingParams``.

Defaults come from the table below, never from a model's ``generation_config.json``: a client
that sends no temperature gets 1.0 on every model, as with OpenAI and Cerebras.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

__all__ = ["DEFAULTS", "SamplingRequest", "to_sampling_params"]

DEFAULTS: dict[str, Any] = {
    "n": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "min_tokens": 0,
    "ignore_eos": False,
}


class SamplingRequest(Protocol):
    """The request fields read here (None: the default), as the server's request models have
    them; sampling does not import the server."""

    @property
    def n(self) -> int | None: ...
    @property
    def temperature(self) -> float | None: ...
    @property
    def top_p(self) -> float | None: ...
    @property
    def top_k(self) -> int | None: ...
    @property
    def min_p(self) -> float | None: ...
    @property
    def frequency_penalty(self) -> float | None: ...
    @property
    def presence_penalty(self) -> float | None: ...
    @property
    def repetition_penalty(self) -> float | None: ...
    @property
    def min_tokens(self) -> int | None: ...
    @property
    def ignore_eos(self) -> bool | None: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def stop_list(self) -> list[str]: ...
    @property
    def num_logprobs(self) -> int | None:
        """Alternatives reported per sampled token (0: the sampled one only); None: none."""
        ...

    @property
    def logit_bias(self) -> Mapping[str, float] | None: ...


def to_sampling_params(
    request: SamplingRequest,
    *,
    max_tokens: int,
    stop_token_ids: Iterable[int],
    structured_outputs: StructuredOutputsParams | None = None,
    prompt_logprobs: int | None = None,
) -> SamplingParams:
    """The engine parameters for ``request``; ``max_tokens`` is already fitted to the context.

    Greedy decoding is the explicit state ``temperature == 0``; the request is never rewritten
    to get it (vLLM itself then resets top_p, top_k and min_p, which greedy ignores).
    ``prompt_logprobs`` asks for the prompt tokens' logprobs too (a completion's echo).
    """
    fields = {key: _get(request, key, default) for key, default in DEFAULTS.items()}
    return SamplingParams(
        **fields,
        seed=request.seed,
        stop=request.stop_list or None,
        # ignore_eos (benchmarks) means "run to max_tokens": end-of-turn tokens too.
        stop_token_ids=[] if request.ignore_eos else list(stop_token_ids),
        max_tokens=max_tokens,
        logprobs=request.num_logprobs,
        prompt_logprobs=prompt_logprobs,
        logit_bias={int(k): v for k, v in request.logit_bias.items()}
        if request.logit_bias
        else None,
        structured_outputs=structured_outputs,
        output_kind=RequestOutputKind.DELTA,
        skip_special_tokens=True,
        include_stop_str_in_output=False,
        # Built fresh for each request, as vLLM's own server builds its: the engine's
        # defensive deep copy (which revalidates every field) is pure cost per request.
        skip_clone=True,
    )


def _get(request: SamplingRequest, key: str, default: Any) -> Any:
    value = getattr(request, key)
    if key == "top_k" and value == -1:
        return 0  # OpenAI-style "all tokens"
    return default if value is None else value
