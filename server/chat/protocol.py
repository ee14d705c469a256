"""The Chat Completions wire format: request and response models.

Fields follow the order of the OpenAI reference. Fields marked *Cerebras* or *extension*
are not in OpenAI's API. Validation here covers shape and ranges only; checks that need the
model (context length, vocabulary) live in ``server.chat.preparation``.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.http.jsonscan import json_depth

__all__ = [
    "IGNORED_FIELDS",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "ChoiceLogprobs",
    "FunctionCall",
    "ModelCard",
    "ModelList",
    "NamedToolChoice",
    "PromptTokensDetails",
    "ResponseFormat",
    "ServiceTier",
    "TimeInfo",
    "Tool",
    "ToolCall",
    "Usage",
]

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_USER_CHARS = 256
"""Longest ``user`` id: it is written into every access-log line."""
MAX_PROMPT_CACHE_KEY_CHARS = 1024
"""Longest ``prompt_cache_key``: it is logged with every request. OpenAI refuses keys above 64
characters; Cerebras documents no limit, so keys its clients send pass here."""
MAX_ARGUMENT_DEPTH = 64
"""Deepest JSON in an assistant message's tool call arguments (as the body's default)."""

# OpenAI fields that mean nothing for a self-hosted server: accepted and ignored.
IGNORED_FIELDS = frozenset(
    {
        "store",
        "metadata",
        "prediction",
        "modalities",
        "audio",
        "reasoning_effort",
        "web_search_options",
        "safety_identifier",
        "function_call",
        "functions",
        "verbosity",
    }
)


class _Strict(BaseModel):
    # strict: JSON types as documented (no "0.5" for a number, no 0 for a boolean), as OpenAI.
    model_config = ConfigDict(extra="forbid", strict=True)


# ---------------------------------------------------------------- messages


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    """The name of the function to call."""
    arguments: str
    """The arguments as a JSON string."""


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    """One message of the conversation (system, user, assistant or tool)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    """An optional participant name; accepted, not rendered."""
    tool_calls: list[ToolCall] | None = None
    """Assistant only: the calls the assistant made."""
    tool_call_id: str | None = None
    """Tool only: the call this message answers."""

    @property
    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    @model_validator(mode="after")
    def _check_role_fields(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages may carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        # The prompt renders parsed arguments, and Python's json recurses once per level.
        arguments = (call.function.arguments for call in self.tool_calls or [])
        if any(json_depth(a, MAX_ARGUMENT_DEPTH) > MAX_ARGUMENT_DEPTH for a in arguments):
            raise ValueError(f"tool call arguments nest deeper than {MAX_ARGUMENT_DEPTH} levels")
        return self


# ---------------------------------------------------------------- tools


class FunctionDefinition(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """A JSON Schema for the arguments; omitted means no arguments."""
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not TOOL_NAME.fullmatch(name):  # match() would let "name\n" through
            raise ValueError(
                f"tool name {name!r} must be 1 to 64 characters from a-z, A-Z, 0-9, _ and -"
            )
        return name


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class _NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: _NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


# ---------------------------------------------------------------- response_format


class JsonSchemaFormat(_Strict):
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _check_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self


class StreamOptions(_Strict):
    include_usage: bool | None = None


# ---------------------------------------------------------------- request

ServiceTier = Literal["auto", "default", "flex", "priority"]
"""Cerebras's tiers: the engine schedules priority before default before flex; auto runs as
default (the highest tier open to every client here)."""

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class ChatCompletionRequest(_Strict):
    """POST /v1/chat/completions. Unknown fields are refused (see IGNORED_FIELDS)."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    """Token id (as a string key) to a bias from -100 to 100."""
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=8)
    parallel_tool_calls: bool | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    prompt_cache_key: str | None = Field(default=None, max_length=MAX_PROMPT_CACHE_KEY_CHARS)
    """An opaque id of requests likely to share a prompt prefix; logged. The engine's prefix
    cache needs no hint: every request reuses any cached prefix."""
    response_format: ResponseFormat | None = None
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
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
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
        if isinstance(data, dict) and IGNORED_FIELDS.intersection(data):
            data = {k: v for k, v in data.items() if k not in IGNORED_FIELDS}
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

    @field_validator("tools")
    @classmethod
    def _check_unique_tools(cls, tools: list[Tool] | None) -> list[Tool] | None:
        names = [t.function.name for t in tools or []]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tool names must be unique; repeated: {', '.join(dupes)}")
        return tools

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def tier_used(self) -> Literal["default", "flex", "priority"]:
        """The tier the request runs on: ``auto`` and none run as default."""
        tier = self.service_tier
        return "default" if tier is None or tier == "auto" else tier

    @property
    def completion_limit(self) -> int | None:
        """max_completion_tokens wins over the older max_tokens."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def effective_tool_choice(self) -> Literal["none", "auto", "required"] | NamedToolChoice:
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"


# ---------------------------------------------------------------- response


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


def _omitted_when_null(default: Any = None) -> Any:
    """A field left out of the JSON when it is None. Every other field is sent, null or not:
    the wire follows OpenAI's schema and habits (absent ``tool_calls``, ``finish_reason: null``
    on every chunk but the last)."""
    return Field(default=default, exclude_if=lambda value: value is None)


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = _omitted_when_null()


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: FinishReason | None
    logprobs: ChoiceLogprobs | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int
    """Prompt tokens the engine's prefix cache held: not computed again."""


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = _omitted_when_null()

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


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: Usage
    time_info: TimeInfo | None = None
    """Cerebras: timings taken from the engine's own request timestamps."""
    service_tier: ServiceTier | None = _omitted_when_null()
    """The request's ``service_tier``, when it sent one."""
    service_tier_used: ServiceTier | None = _omitted_when_null()
    """Cerebras, with ``auto``: the tier the request ran on."""


class ToolCallDelta(BaseModel):
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Delta(BaseModel):
    role: Literal["assistant"] | None = _omitted_when_null()
    content: str | None = _omitted_when_null()
    tool_calls: list[ToolCallDelta] | None = _omitted_when_null()


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = _omitted_when_null()
    time_info: TimeInfo | None = _omitted_when_null()
    service_tier: ServiceTier | None = _omitted_when_null()
    service_tier_used: ServiceTier | None = _omitted_when_null()


# ---------------------------------------------------------------- models


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
