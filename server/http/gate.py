"""The front door: one pure ASGI middleware that every HTTP request passes through.

It names the request (``x-request-id``: the client's, or a new one), checks the API key, turns
requests away while the server drains or after its engine died, counts in-flight requests for
the drain, counts responses by status, runs the request's cleanups (admission slots) once the
response has been sent in full, and writes one access-log line.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which runs the app in a separate task
and breaks streaming responses and client-disconnect detection.

The key is required on every path and method, including unknown paths and odd spellings
(``/health/``, ``//health``, ``/HEALTH``): the only exemptions are ``GET`` (the one method those
routes serve) on the exact path the router serves as ``/health`` (the decoded
``scope["path"]``, so ``/%68ealth`` is the same route) and, with ``metrics_public``,
``/metrics``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError, AuthenticationError, DrainingError, EngineDeadError
from server.http.auth import ApiKeys
from server.lifecycle import Lifecycle
from server.metrics import count_error, count_response

__all__ = ["AccessRecord", "Gate", "record_of", "request_record"]

access_log = logging.getLogger("server.access")

PROBES = frozenset({"/health", "/metrics"})
"""Paths that are not work: not counted for the drain, logged at debug level."""
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_VERSION_PATCH = re.compile(r"[0-9]{1,9}")
"""Cerebras's ``X-Cerebras-Version-Patch`` (the API version a client pins, such as ``2``): the
server has one behaviour for all versions, so it serves the request as any other and logs the
version, for an operator to see which clients are pinned. A value that is not a version
number is left out of the log, not refused (what Cerebras does with one is not documented)."""


@dataclass
class AccessRecord:
    """What the access log says about one request; routes add their ``fields``."""

    request_id: str
    client_request_id: str | None = None
    arrival: float = field(default_factory=time.time)
    """When the front door first saw the request (wall clock), before its body arrived."""
    key_id: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def note_error(self, error: APIError) -> None:
        """The request was refused or failed with ``error``: in its log line and the metrics
        (every error a client sees passes here once)."""
        self.fields["error"] = error.code
        count_error(error, model=self.fields.get("model"))


def record_of(scope: Scope) -> AccessRecord:
    """The request's record (a throwaway one when the app runs without the Gate)."""
    state = scope.setdefault("state", {})
    if "record" not in state:
        state["record"] = AccessRecord(request_id=_new_id())
    return state["record"]


def request_record(request: Request) -> AccessRecord:
    return record_of(request.scope)


def _new_id() -> str:
    return f"req-{uuid.uuid4().hex}"


def _route_path(scope: Scope) -> str:
    """The path the router matches (Starlette strips ``root_path`` the same way)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class Gate:
    def __init__(
        self, app: ASGIApp, *, keys: ApiKeys, lifecycle: Lifecycle, metrics_public: bool = False
    ) -> None:
        self.app = app
        self.keys = keys
        self.lifecycle = lifecycle
        self.public = {"/health"} | ({"/metrics"} if metrics_public else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket" and self.keys.enabled:
            # No websocket routes are served; never let one through unauthenticated.
            if self.keys.check(_header(scope, b"authorization")) is None:
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        path, method = _route_path(scope), scope.get("method", "GET").upper()
        client_id = _header(scope, b"x-request-id")
        client_id = client_id if client_id and _SAFE_ID.match(client_id) else None
        record = AccessRecord(request_id=client_id or _new_id(), client_request_id=client_id)
        scope.setdefault("state", {})["record"] = record
        version_patch = _header(scope, b"x-cerebras-version-patch")
        if version_patch is not None and _VERSION_PATCH.fullmatch(version_patch):
            record.fields["version_patch"] = version_patch
        status: list[int] = []

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                headers = MutableHeaders(scope=message)
                headers.setdefault("x-request-id", record.request_id)
                record.request_id = headers["x-request-id"]
            await send(message)

        probe = path in PROBES
        tracked = crashed = False
        try:
            refusal = self._refusal(scope, path, method, record)
            if refusal is not None:
                record.note_error(refusal)
                response = JSONResponse(
                    refusal.body(), status_code=refusal.status, headers=refusal.headers
                )
                await response(scope, receive, send_wrapper)
                return
            tracked = not probe
            if tracked:
                self.lifecycle.enter()
            await self.app(scope, receive, send_wrapper)
        except Exception:
            crashed = True
            raise
        finally:
            if tracked:
                self.lifecycle.leave()
            for cleanup in record.cleanups:
                cleanup()
            # No response and no error: the client went away first (nginx's 499).
            code = status[0] if status else 500 if crashed else 499
            count_response(code)
            line = {
                "request_id": record.request_id,
                "method": method,
                "path": path,
                "status": code,
                "duration_s": round(time.monotonic() - started, 4),
                "client": (scope.get("client") or ("", 0))[0],
                "key_id": record.key_id,
            } | record.fields
            access_log.log(logging.DEBUG if probe else logging.INFO, "request", extra=line)

    def _refusal(
        self, scope: Scope, path: str, method: str, record: AccessRecord
    ) -> APIError | None:
        """The error to answer when the request must not reach the app, else None."""
        exempt = method == "GET" and path in self.public
        if self.keys.enabled and not exempt:
            given = _header(scope, b"authorization")
            record.key_id = self.keys.check(given)
            if record.key_id is None:
                message = (
                    "Incorrect API key provided."
                    if given
                    else "You didn't provide an API key. Send it in an Authorization header "
                    "using Bearer auth (Authorization: Bearer YOUR_KEY)."
                )
                return AuthenticationError(message, headers={"WWW-Authenticate": "Bearer"})
        if path in PROBES:
            return None
        if self.lifecycle.state == "dead":
            return EngineDeadError(
                "The engine has stopped; this server is restarting.",
                headers={"Connection": "close"},
            )
        if self.lifecycle.state != "serving":
            return DrainingError(
                "The server is shutting down; retry on another instance.",
                headers={"Connection": "close", "Retry-After": "1"},
            )
        return None
