"""Request bodies in the encodings Cerebras accepts, decoded into the JSON the routes parse.

Cerebras takes MessagePack bodies (``Content-Type: application/vnd.msgpack``, also
``application/msgpack`` and ``application/x-msgpack``) and gzip ones (``Content-Encoding:
gzip``), alone or together; LiveKit's Cerebras plugin sends both by default. Each becomes
exactly the JSON body a client could have sent, so every check and limit after this one
(``max_request_bytes`` on the decoded size, the JSON scans, validation) applies unchanged.

A gzip bomb is refused while it inflates: output is produced at most one byte past the limit,
never in full. A body that does not decode is a 400; an encoding we do not speak, a 415.
"""

from __future__ import annotations

import json
import zlib

import msgpack

from server.errors import (
    BadRequestError,
    ContentTooLargeError,
    UnsupportedMediaTypeError,
)

__all__ = ["MSGPACK_TYPES", "decode_body", "is_encoded"]

Headers = list[tuple[bytes, bytes]]

MSGPACK_TYPES = frozenset(
    {b"application/vnd.msgpack", b"application/msgpack", b"application/x-msgpack"}
)


def is_encoded(headers: Headers) -> bool:
    """Whether the body is gzip or MessagePack (or claims an encoding we refuse)."""
    encoding, media = _encoding_and_media(headers)
    return encoding not in (b"", b"identity") or media in MSGPACK_TYPES


def decode_body(body: bytes, headers: Headers, limit: int) -> tuple[bytes, Headers] | None:
    """The JSON body and headers the routes should see, or None when the body is plain JSON
    already. Raises the client's error for a body that is too large once inflated, does not
    decode, or is in an encoding not offered here."""
    if not is_encoded(headers):
        return None
    encoding, media = _encoding_and_media(headers)
    if encoding == b"gzip":
        body = _inflate(body, limit)
    elif encoding not in (b"", b"identity"):
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding.decode('latin-1')!r} is not supported; send gzip or "
            "no encoding.",
        )
    if media in MSGPACK_TYPES:
        body = _msgpack_to_json(body)
        if len(body) > limit:
            raise _too_large(limit)
        media = b"application/json"
    kept = [(k, v) for k, v in headers if k not in (b"content-encoding", b"content-length")]
    kept = [(k, media if k == b"content-type" else v) for k, v in kept]
    return body, [*kept, (b"content-length", str(len(body)).encode())]


def _inflate(body: bytes, limit: int) -> bytes:
    """gzip members back to back (RFC 1952), inflated to at most ``limit`` bytes."""
    out: list[bytes] = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing only
        try:
            chunk = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise BadRequestError(
                f"The request body is not valid gzip: {exc}.", code="invalid_body"
            ) from None
        size += len(chunk)
        out.append(chunk)
        if size > limit or inflater.unconsumed_tail:
            raise _too_large(limit)
        if not inflater.eof:
            raise BadRequestError("The gzip request body is cut short.", code="invalid_body")
        rest = inflater.unused_data
        if not rest:
            return b"".join(out)


def _msgpack_to_json(body: bytes) -> bytes:
    try:
        value = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:  # StackError, ExtraData, FormatError
        reason = type(exc).__name__ if not str(exc) else str(exc)
        raise BadRequestError(
            f"The request body is not valid MessagePack: {reason}.", code="invalid_body"
        ) from None
    try:
        # NaN and Infinity pass here and are refused by the JSON scan that follows.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise BadRequestError(
            "The MessagePack request body holds values JSON cannot carry (binary data, "
            f"extension types or non-string keys): {exc}.",
            code="invalid_body",
        ) from None


def _too_large(limit: int) -> ContentTooLargeError:
    return ContentTooLargeError(
        f"The request body decodes to more than {limit} bytes; at most {limit} are allowed."
    )


def _encoding_and_media(headers: Headers) -> tuple[bytes, bytes]:
    encoding = next((v for k, v in headers if k == b"content-encoding"), b"")
    media = next((v for k, v in headers if k == b"content-type"), b"")
    return encoding.strip().lower(), media.split(b";", 1)[0].strip().lower()
