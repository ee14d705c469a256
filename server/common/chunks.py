"""Stream chunks serialized once, cheaply: the per-token path of every stream.

A streamed answer sends one chunk per engine output (a token or a few), and building a
pydantic chunk, then dumping it, cost more CPU per token than anything else the API process
does. Every chunk of a request shares its envelope (id, created, model, fingerprint, tiers):
:class:`ChunkTemplate` serializes that envelope once per request, with the request's own
pydantic chunk model so that its bytes are the model's, and each token's chunk is the
template with the choices spliced in, strings escaped by orjson (the same bytes as pydantic's
serializer: UTF-8 as is, control characters escaped; ``tests/unit/test_chunks.py`` holds the
fast path to the models' output).

Chunks that carry usage or timings (a stream's last ones) are rare: they are built as models
and serialized by pydantic (:meth:`ChunkTemplate.of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from server.common.protocol import TimeInfo, Usage

__all__ = ["ChunkTemplate", "Encoded", "chat_content_choice", "completion_text_choice"]

_CHOICES = b'"choices":[]'


@dataclass(slots=True)
class Encoded:
    """One chunk as JSON bytes, with the usage and timings the access log reads of it."""

    data: bytes
    usage: Usage | None = None
    time_info: TimeInfo | None = None


def _to_json(model: BaseModel) -> bytes:
    """``model.model_dump_json()``, as bytes."""
    return model.__pydantic_serializer__.to_json(model)


def chat_content_choice(index: int, text: str, logprobs: BaseModel | None) -> bytes:
    """A chat chunk's choice of new text: ``ChunkChoice(index=index,
    delta=Delta(content=text), logprobs=logprobs)``, serialized."""
    lp = b"null" if logprobs is None else _to_json(logprobs)
    return b'{"index":%d,"delta":{"content":%b},"finish_reason":null,"logprobs":%b}' % (
        index,
        orjson.dumps(text),
        lp,
    )


def completion_text_choice(
    index: int, text: str, logprobs: BaseModel | None, tokens: list[int] | None
) -> bytes:
    """A text completion chunk's choice: ``CompletionChoice(index=index, text=text,
    logprobs=logprobs, tokens=tokens)``, serialized (``tokens`` left out when None)."""
    lp = b"null" if logprobs is None else _to_json(logprobs)
    more = b"" if tokens is None else b',"tokens":' + orjson.dumps(tokens)
    return b'{"index":%d,"text":%b,"logprobs":%b,"finish_reason":null%b}' % (
        index,
        orjson.dumps(text),
        lp,
        more,
    )


class ChunkTemplate:
    """A request's chunks: the envelope serialized once, choices spliced in per chunk."""

    __slots__ = ("_head", "_model", "_tail", "envelope")

    def __init__(self, model: type[BaseModel], envelope: dict[str, Any]) -> None:
        self._model, self.envelope = model, envelope
        empty = _to_json(model(**envelope, choices=[]))
        # Inside a JSON string every quote is escaped, so this is the field itself.
        head, found, tail = empty.partition(_CHOICES)
        if not found:
            raise ValueError(f"{model.__name__} has no choices field to splice into")
        self._head = head + b'"choices":['
        self._tail = b"]" + tail

    def encode(self, choices: bytes) -> Encoded:
        """A chunk whose ``choices`` array holds ``choices`` (serialized choice objects,
        comma-separated), with the envelope's other fields as the model sends them."""
        return Encoded(self._head + choices + self._tail)

    def of(self, choices: list[Any], **fields: Any) -> Encoded:
        """A chunk built as the model (usage, timings: the rare chunks), serialized by it."""
        return Encoded(
            _to_json(self._model(**self.envelope, choices=choices, **fields)),
            usage=fields.get("usage"),
            time_info=fields.get("time_info"),
        )
