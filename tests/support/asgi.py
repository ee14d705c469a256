"""Stand-in ASGI pieces for testing middleware without the app."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["read_body", "reply_json"]


async def read_body(receive: Any) -> bytes:
    """The whole request body as the app behind a middleware receives it."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def reply_json(send: Any, value: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(value).encode()})
