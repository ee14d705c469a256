"""A generating route's body, parsed and validated off the event loop when it is large.

FastAPI parses and validates a declared body on the event loop: a 16 MiB body of token ids
holds the loop (and every other request, ``/health`` among them) for most of a second. Here
the route reads the body itself and a body larger than ``SCAN_IN_THREAD_BYTES`` (the size from
which the JSON scan also moves to a thread) is parsed and validated in a worker thread.

The steps are FastAPI's own: JSON is parsed only for a JSON content type, the model validates
the parsed value, and a failure is a ``RequestValidationError`` with locations under ``body``,
which the app's one handler turns into a 400 naming the parameter. A body that is not a JSON
object at all (empty, broken, another media type) names none. The OpenAPI document still
names the model as the request body (``server.http.openapi``).
"""

from __future__ import annotations

import asyncio
import json
from email.message import Message
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from server.http.request_limits import SCAN_IN_THREAD_BYTES

__all__ = ["parse_body", "validate_body"]

M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, model: type[M]) -> M:
    """``request``'s body as ``model``; raises ``RequestValidationError``."""
    raw = await request.body()
    content_type = request.headers.get("content-type")
    if len(raw) <= SCAN_IN_THREAD_BYTES:
        return validate_body(raw, content_type, model)
    return await asyncio.to_thread(validate_body, raw, content_type, model)


def validate_body(raw: bytes, content_type: str | None, model: type[M]) -> M:
    """``raw`` as ``model``, as FastAPI would parse and validate it."""
    if not raw or not _is_json(content_type):
        raise _not_an_object()
    try:
        data: Any = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        raise _not_an_object("json_invalid") from None
    if not isinstance(data, dict):
        raise _not_an_object()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


def _is_json(content_type: str | None) -> bool:
    """FastAPI's test: ``application/json`` or ``application/*+json``, parameters aside."""
    if not content_type:
        return False
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _not_an_object(kind: str = "model_attributes_type") -> RequestValidationError:
    """An empty body, another media type, broken JSON or JSON that is not an object: the
    handler's "not a valid JSON object", naming no parameter."""
    return RequestValidationError([{"type": kind, "loc": ("body",), "msg": kind, "input": {}}])
