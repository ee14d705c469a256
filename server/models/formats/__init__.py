"""Prompt formats per model family, chosen by a model config's ``chat_format`` field."""

from __future__ import annotations

from server.models.formats.base import ChatFormat, Segment, encode_segments
from server.models.formats.chatml import ChatML
from server.models.formats.llama3 import Llama3

__all__ = ["FORMATS", "ChatFormat", "Segment", "encode_segments", "get_chat_format"]

FORMATS: dict[str, type[ChatFormat]] = {"llama3": Llama3, "chatml": ChatML}


def get_chat_format(name: str) -> ChatFormat:
    """A new instance of the format called ``name`` (``llama3`` or ``chatml``)."""
    try:
        return FORMATS[name]()
    except KeyError:
        raise ValueError(
            f"unknown chat format {name!r}; known formats: {', '.join(sorted(FORMATS))}"
        ) from None
