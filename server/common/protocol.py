"""Wire models that Chat Completions and (legacy) Completions share: the sampling fields of a
request, usage, Cerebras's ``time_info``, token logprobs (as engine outputs are first turned
into), and the helpers both protocols build on.

Each endpoint's own models live in ``server.chat.protocol`` and
``server.completions.protocol``; this module holds what they would otherwise both copy.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "MAX_USER_CHARS",
    "ChoiceLogprobs",
    "GenerationRequest",
    "Probability",
    "PromptTokensDetails",
    "ServiceTier",
    "StreamOptions",
    "Strict",
    "TimeInfo",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
    "omitted_when_null",
]

MAX_USER_CHARS = 256
"""Longest ``user`` id: it is written into every access-log line."""

MAX_PROMPT_CACHE_KEY_CHARS = 1024
"""Longest ``prompt_cache_key``: it is logged with every request. OpenAI refuses keys above 64
characters; Cerebras documents no limit, so keys its clients send pass here."""

Probability = Annotated[float, Field(ge=0.0, le=1.0)]

ServiceTier = Literal["auto", "default", "flex", "priority"]
"""Cerebras's tiers: the engine schedules priority before default before flex; auto runs as
default (the highest tier open to every client here)."""


class Strict(BaseModel):
    # strict: JSON types as documented (no "0.5" for a number, no 0 for a boolean), as OpenAI.
    model_config = ConfigDict(extra="forbid", strict=True)


def omitted_when_null(default: Any = None) -> Any:
    """A field left out of the JSON when it is None. Every other field is sent, null or not:
    the wire follows OpenAI's schema and habits (absent ``tool_calls``, ``finish_reason: null``
    on every chunk but the last)."""
    return Field(default=default, exclude_if=lambda value: value is None)


class StreamOptions(Strict):
    include_usage: bool | None = None


class GenerationRequest(Strict):
    """The fields every generating request has (model, sampling, streaming, user), with their
    checks. Unknown fields are refused, except the subclass's ``IGNORED_FIELDS``."""

    IGNORED_FIELDS: ClassVar[frozenset[str]] = frozenset()
    """Fields of the reference API that mean nothing here: accepted and dropped."""

    model: str
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    """Token id (as a string key) to a bias from -100 to 100."""
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=8)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    prompt_cache_key: str | None = Field(default=None, max_length=MAX_PROMPT_CACHE_KEY_CHARS)
    """An opaque id of requests likely to share a prompt prefix; logged. The engine's prefix
    cache needs no hint: every request reuses any cached prefix."""
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    service_tier: ServiceTier | None = None
    """Cerebras: the request's scheduling priority (none: default); echoed in the response."""
    stop: str | list[str] | None = None
    """Up to 4 sequences; generation stops before them and they are not returned."""
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.5)
    """0 to 1.5 (Cerebras's range); 0 means greedy decoding."""
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    user: str | None = Field(default=None, max_length=MAX_USER_CHARS)
    """The end-user's id; logged with the request id, never sent to the model."""

    # vLLM sampling extensions (sent through the SDKs' extra_body).
    top_k: int | None = Field(default=None, ge=-1, le=2**31 - 1)
    """extension: sample from the k most likely tokens (-1 or 0: all)."""
    min_p: Probability | None = None
    """extension: drop tokens below min_p times the top probability."""
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=2.0)
    """extension: penalise tokens already in the prompt or output (1: off). At least 0.01: the
    engine divides logits by it, and a tinier one (the schema fuzzer sent 5e-324) overflows
    them to infinity, after which the sampler picks tokens the grammar forbids."""
    min_tokens: int | None = Field(default=None, ge=0)
    """extension (also Cerebras): generate at least this many tokens before stopping."""
    ignore_eos: bool | None = None
    """extension: keep generating past end-of-sequence (for benchmarks)."""

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.IGNORED_FIELDS.intersection(data):
            data = {k: v for k, v in data.items() if k not in cls.IGNORED_FIELDS}
        return data

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        for s in stops:
            if not s:
                raise ValueError("stop sequences must not be empty")
            if len(s) > 256:
                raise ValueError("a stop sequence may be at most 256 characters")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key in bias or {}:
            if not (key.isascii() and key.isdigit()) or int(key) >= 2**31:
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        return bias

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def tier_used(self) -> Literal["default", "flex", "priority"]:
        """The tier the request runs on: ``auto`` and none run as default."""
        tier = self.service_tier
        return "default" if tier is None or tier == "auto" else tier

    @property
    def include_usage(self) -> bool:
        """OpenAI's separate usage chunk at the end of a stream was asked for."""
        return bool(self.stream_options and self.stream_options.include_usage)


class PromptTokensDetails(BaseModel):
    cached_tokens: int
    """Prompt tokens the engine's prefix cache held: not computed again."""


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = omitted_when_null()

    @property
    def uncached_tokens(self) -> int:
        """Cerebras's uncached count: prompt tokens not served from the cache, plus the
        completion."""
        cached = self.prompt_tokens_details.cached_tokens if self.prompt_tokens_details else 0
        return self.total_tokens - cached


class TimeInfo(BaseModel):
    """Cerebras: seconds spent queued, on the prompt, on the completion, and in all."""

    queue_time: float
    prompt_time: float
    completion_time: float
    total_time: float
    created: float


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None
