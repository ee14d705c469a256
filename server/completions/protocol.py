"""The (legacy) Completions wire format: ``POST /v1/completions`` request and response models.

Fields follow the order of the OpenAI reference; the sampling, streaming and user fields are
``GenerationRequest``'s, as for chat. Fields marked *Cerebras* or *extension* are not in
OpenAI's API. Checks that need the model (context length, vocabulary) live in
``server.completions.preparation``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from server.common.protocol import (
    GenerationRequest,
    ServiceTier,
    TimeInfo,
    Usage,
    omitted_when_null,
)

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_CHOICES",
    "MAX_LOGPROBS",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "CompletionResponse",
]

MAX_LOGPROBS = 20
"""Most alternatives per token (``logprobs``): OpenAI allows 5, Cerebras names no limit, the
engine's default ``max_logprobs`` (and chat's ``top_logprobs``) is 20."""

DEFAULT_MAX_TOKENS = 16
"""OpenAI's legacy default, kept so that clients written for it get what they expect."""
MAX_CHOICES = 32
"""Most choices (prompts times ``n``) in one request. A request holds one admission place,
whatever its prompts: the bound keeps one request from filling the engine's queue past what
admission allows."""


def _check_choices(prompts: int, info: ValidationInfo) -> None:
    n = info.data.get("n") or 1
    if prompts * n > MAX_CHOICES:
        raise ValueError(
            f"{prompts} prompts with n={n} ask for {prompts * n} choices; "
            f"at most {MAX_CHOICES} are allowed in one request"
        )


class CompletionRequest(GenerationRequest):
    """POST /v1/completions. Unknown fields are refused (see IGNORED_FIELDS)."""

    """Cerebras fields with no meaning for a self-hosted server: accepted and ignored."""

    max_tokens: int | None = Field(default=None, ge=1)
    """Tokens to generate per choice; 16 when omitted or null (DEFAULT_MAX_TOKENS)."""
    prompt: list[int] | str | list[str] | list[list[int]]
    """One prompt as text or token ids, or a list of them: each gets ``n`` choices, numbered
    ``prompt_index * n + i``. Token ids first: pydantic tries the types in order, and a list
    of ids tried as strings first made one error per id (0.56 s for 600,000 ids, not 0.03)."""
    best_of: int | None = Field(default=None, ge=1, le=8)
    """Accepted only equal to ``n``: choosing the best of more candidates is not supported."""
    echo: bool | None = None
    """Return the prompt before the completion (and, with ``logprobs``, its tokens' logprobs;
    the first token has none)."""
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    """The sampled token's logprob and the ``logprobs`` most likely alternatives per token."""
    suffix: str | None = None
    """Refused when set: this server does not insert text (nor does Cerebras)."""
    grammar_root: str | None = None
    """Cerebras: refused when set (no grammar-constrained completions here)."""
    return_raw_tokens: bool | None = None
    """Cerebras: also return each choice's generated token ids as ``tokens``."""

    @field_validator("prompt", mode="before")
    @classmethod
    def _count_prompts(cls, prompt: Any, info: ValidationInfo) -> Any:
        """Too many prompts are refused before each is validated: 4 MiB hold 600,000 of
        them, and pydantic validates a list without letting go of the GIL, which holds up
        the event loop even when it runs in a worker thread."""
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            _check_choices(len(prompt), info)
        return prompt

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt: Any, info: ValidationInfo) -> Any:
        if isinstance(prompt, list):
            if not prompt:
                raise ValueError("the prompt is an empty list")
            if any(isinstance(p, list) and not p for p in prompt):
                raise ValueError("a token-id prompt is empty")
            ids = [prompt] if isinstance(prompt[0], int) else prompt
            if any(isinstance(i, int) and i < 0 for p in ids if isinstance(p, list) for i in p):
                raise ValueError("token ids must not be negative")
            _check_choices(1 if isinstance(prompt[0], int) else len(prompt), info)
        return prompt

    @field_validator("best_of")
    @classmethod
    def _check_best_of(cls, best_of: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n") or 1
        if best_of is not None and best_of != n:
            raise ValueError(
                f"best_of must equal n ({n}): choosing the best of more candidates is not supported"
            )
        return best_of

    @field_validator("suffix")
    @classmethod
    def _refuse_suffix(cls, suffix: str | None) -> str | None:
        if suffix:
            raise ValueError("suffix is not supported: this server does not insert text")
        return suffix

    @field_validator("grammar_root")
    @classmethod
    def _refuse_grammar(cls, grammar_root: str | None) -> str | None:
        if grammar_root is not None:
            raise ValueError("grammar_root is not supported")
        return grammar_root

    @property
    def prompts(self) -> list[str] | list[list[int]]:
        """The prompts as a list: texts or token-id lists."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt[0], int):
            return [prompt]
        return prompt

    @property
    def num_logprobs(self) -> int | None:
        """Alternatives per sampled token, or None for no logprobs (sampling reads this)."""
        return self.logprobs

    @property
    def completion_limit(self) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS

    def logged_prompt(self) -> dict[str, Any]:
        return {"prompt": self.prompt}


# ---------------------------------------------------------------- response


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs: parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    """None for the first prompt token (echo): nothing comes before it."""
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    """The most likely tokens at each position and the sampled one (up to logprobs + 1)."""
    text_offset: list[int] = Field(default_factory=list)
    """Each token's character offset in the prompt followed by the completion."""

    def extend(self, more: CompletionLogprobs) -> None:
        self.tokens += more.tokens
        self.token_logprobs += more.token_logprobs
        self.top_logprobs += more.top_logprobs
        self.text_offset += more.text_offset


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None
    tokens: list[int] | None = omitted_when_null()
    """Cerebras (``return_raw_tokens``): the generated token ids."""


class CompletionResponse(BaseModel):
    """A completion, and each streamed chunk of one: both are ``text_completion`` objects."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = omitted_when_null()
    """On a plain answer; in a stream, on the last chunk, or alone on a final chunk of no
    choices when ``stream_options.include_usage`` is set."""
    time_info: TimeInfo | None = omitted_when_null()
    """Cerebras: timings taken from the engine's own request timestamps."""
    service_tier: ServiceTier | None = omitted_when_null()
    """The request's ``service_tier``, when it sent one."""
    service_tier_used: ServiceTier | None = omitted_when_null()
    """With ``service_tier: auto``, the tier the request ran on."""
