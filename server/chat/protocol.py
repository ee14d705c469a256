"""The Chat Completions wire format: request and response models.

Fields follow the order of the OpenAI reference. Fields marked *Cerebras* or *extension*
are not in OpenAI's API. Validation here covers shape and ranges only; checks that need the
model (context length, vocabulary) live in ``server.chat.preparation``.
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from server.common.protocol import (
    ChoiceLogprobs,
    GenerationRequest,
    ServiceTier,
    Strict,
    TimeInfo,
    Usage,
    omitted_when_null,
)
from server.http.jsonscan import json_depth

__all__ = [
    "IGNORED_FIELDS",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "FunctionCall",
    "ModelCard",
    "ModelList",
    "NamedToolChoice",
    "ResponseFormat",
    "Tool",
    "ToolCall",
]

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_ARGUMENT_DEPTH = 64
MAX_MESSAGES = 32768
"""More messages than any context fits: 131,072 tokens (Llama 3.1's) at 4 or more template
tokens per message."""
MAX_TOOLS = 128
"""OpenAI's limit on ``tools``."""
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


# ---------------------------------------------------------------- messages


class TextPart(Strict):
    type: Literal["text"]
    text: str


class FunctionCall(Strict):
    name: str
    """The name of the function to call."""
    arguments: str
    """The arguments as a JSON string."""


class ToolCall(Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Strict):
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


class FunctionDefinition(Strict):
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


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class _NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: _NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


# ---------------------------------------------------------------- response_format


class JsonSchemaFormat(Strict):
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _check_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self


# ---------------------------------------------------------------- request


class ChatCompletionRequest(GenerationRequest):
    """POST /v1/chat/completions. Unknown fields are refused (see IGNORED_FIELDS); the
    sampling, streaming and user fields are ``GenerationRequest``'s."""

    IGNORED_FIELDS: ClassVar[frozenset[str]] = IGNORED_FIELDS

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None

    @field_validator("messages", "tools", mode="before")
    @classmethod
    def _count(cls, items: Any, info: ValidationInfo) -> Any:
        """Too many messages or tools are refused before each is validated: pydantic
        validates a list without letting go of the GIL, which holds up the event loop even
        when it runs in a worker thread, and 4 MiB hold 120,000 tiny messages."""
        most = MAX_MESSAGES if info.field_name == "messages" else MAX_TOOLS
        if isinstance(items, list) and len(items) > most:
            raise PydanticCustomError(
                "array_above_max_length",  # OpenAI's code and wording
                "array too long. Expected an array with maximum length {most}, but got an "
                "array with length {length} instead.",
                {"most": most, "length": len(items)},
            )
        return items

    @field_validator("tools")
    @classmethod
    def _check_unique_tools(cls, tools: list[Tool] | None) -> list[Tool] | None:
        names = [t.function.name for t in tools or []]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tool names must be unique; repeated: {', '.join(dupes)}")
        return tools

    def logged_prompt(self) -> dict[str, Any]:
        return {"messages": [m.model_dump(exclude_none=True) for m in self.messages]}

    @property
    def num_logprobs(self) -> int | None:
        """Alternatives per sampled token, or None for no logprobs (sampling reads this)."""
        return (self.top_logprobs or 0) if self.logprobs else None

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


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = omitted_when_null()


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: FinishReason | None
    logprobs: ChoiceLogprobs | None = None


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
    service_tier: ServiceTier | None = omitted_when_null()
    """The request's ``service_tier``, when it sent one."""
    service_tier_used: ServiceTier | None = omitted_when_null()
    """Cerebras, with ``auto``: the tier the request ran on."""


class ToolCallDelta(BaseModel):
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Delta(BaseModel):
    role: Literal["assistant"] | None = omitted_when_null()
    content: str | None = omitted_when_null()
    tool_calls: list[ToolCallDelta] | None = omitted_when_null()


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
    usage: Usage | None = omitted_when_null()
    time_info: TimeInfo | None = omitted_when_null()
    service_tier: ServiceTier | None = omitted_when_null()
    service_tier_used: ServiceTier | None = omitted_when_null()


# ---------------------------------------------------------------- models


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
