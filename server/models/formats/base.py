"""The interface every model family's chat format implements.

A format renders a conversation as segments: plain text, or the exact spelling of one special
token. Encoding keeps them apart, so text that merely spells a special token (a user typing
``<|eot_id|>``) is tokenized as text and can never forge a turn.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

from server.chat.protocol import ChatMessage, Tool
from server.models.formats.tool_calls import JsonToolCalls

__all__ = ["ChatFormat", "Segment", "TokenizerLike", "encode_segments"]


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    special: bool = False
    """True when ``text`` is the spelling of one special token."""


class TokenizerLike(Protocol):
    def encode(self, text: str, **kwargs: Any) -> list[int]: ...
    def decode(self, token_ids: list[int], **kwargs: Any) -> str: ...
    def convert_tokens_to_ids(self, token: str) -> int: ...


class ChatFormat(ABC):
    """Prompt layout, tool-definition layout, tool-call syntax and stop tokens of one model
    family."""

    name: str
    stop_tokens: tuple[str, ...]
    """Special tokens that end an assistant turn."""
    tool_calls: JsonToolCalls
    """How the model writes tool calls: rendered in history, parsed from answers, enforced by
    the grammar."""

    @abstractmethod
    def render(self, messages: list[ChatMessage], tools: list[Tool] | None) -> list[Segment]:
        """The prompt for ``messages``, ending with the open assistant header."""


def encode_segments(segments: list[Segment], tokenizer: TokenizerLike) -> list[int]:
    """Token ids for ``segments``; special-token spellings inside text stay text."""
    ids: list[int] = []
    for segment in segments:
        if segment.special:
            ids.append(tokenizer.convert_tokens_to_ids(segment.text))
        elif segment.text:
            ids.extend(
                tokenizer.encode(segment.text, add_special_tokens=False, split_special_tokens=True)
            )
    return ids
