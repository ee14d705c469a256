"""One exception hierarchy for every error a client can see.

Each class carries its HTTP status, OpenAI error ``type``, default ``code`` and the ``reason``
it is counted under in ``llama_serve_rejected_requests_total`` (None: not a rejection). The
app maps them to the ``{"error": {...}}`` envelope in one handler (``server.app``), a stream
renders the same body as a data event, and the libraries' own errors (``grammars``) become
these classes in :func:`from_library`, the one place that knows both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import grammars

__all__ = [
    "REJECTION_REASONS",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BodyTimeoutError",
    "ContentTooLargeError",
    "DrainingError",
    "EngineDeadError",
    "EngineFailedError",
    "FailedGenerationError",
    "HeadersTooLargeError",
    "InternalError",
    "MethodNotAllowedError",
    "ModelNotFoundError",
    "NotFoundError",
    "OverloadedError",
    "QueueThresholdError",
    "RateLimitedError",
    "RequestTimeoutError",
    "SchemaError",
    "ServiceUnavailableError",
    "UnsupportedError",
    "UnsupportedMediaTypeError",
    "from_library",
]


class APIError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None
    reason: ClassVar[str | None] = None
    """What ``llama_serve_rejected_requests_total`` counts it under (refused, or cut short);
    None for server bugs and failed generations (which have their own counter)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """OpenAI's envelope. ``status_code`` beside it is what the Cerebras SDK reads first
        to choose its exception class, so a stream's error event (sent with a 200) raises
        the same class as the error would as a response."""
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error | self.extra, "status_code": self.status}


class BadRequestError(APIError):
    status = 400
    type = "invalid_request_error"
    reason: ClassVar[str | None] = "bad_request"


class UnsupportedError(BadRequestError):
    """A valid request for a feature this server does not offer (yet)."""

    default_code = "unsupported_parameter"


class SchemaError(BadRequestError):
    """A JSON Schema (response_format or a tool) that is invalid or cannot be enforced."""

    default_code = "invalid_schema"


class FailedGenerationError(BadRequestError):
    """Cerebras: JSON mode output that does not parse or validate; carries the text."""

    default_code = "json_validate_failed"
    reason = None

    def __init__(self, message: str, *, failed_generation: str, param: str) -> None:
        super().__init__(message, param=param, failed_generation=failed_generation)


class BodyTimeoutError(BadRequestError):
    """The request body arrived too slowly (a client holding a connection)."""

    status = 408
    default_code = "body_timeout"


class AuthenticationError(APIError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"
    reason = "auth"


class NotFoundError(APIError):
    status = 404
    type = "not_found_error"
    reason = "not_found"


class ModelNotFoundError(NotFoundError):
    type = "invalid_request_error"
    default_code = "model_not_found"


class MethodNotAllowedError(APIError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"
    reason = "bad_request"


class ContentTooLargeError(APIError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"
    reason = "too_large"


class UnsupportedMediaTypeError(APIError):
    """A body in an encoding the server does not decode."""

    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"
    reason = "bad_request"


class HeadersTooLargeError(ContentTooLargeError):
    status = 431
    default_code = "headers_too_large"


class OverloadedError(APIError):
    status = 429
    type = "rate_limit_error"
    default_code = "queue_full"
    reason = "overloaded"


class QueueThresholdError(OverloadedError):
    """A flex or auto request whose expected wait for the engine is longer than its
    ``queue_threshold`` header allows: refused at once rather than queued."""

    default_code = "queue_threshold_exceeded"


class RateLimitedError(OverloadedError):
    """An API key over its requests-per-day or tokens-per-minute limit."""

    default_code = "rate_limit_exceeded"
    reason = "rate_limited"


class InternalError(APIError):
    status = 500
    type = "api_error"
    default_code = "internal_error"


class EngineFailedError(InternalError):
    """The engine ended a request on its own (vLLM's ``abort`` or ``error``)."""

    default_code = "engine_error"
    reason = "engine_error"


class ServiceUnavailableError(APIError):
    status = 503
    type = "api_error"
    default_code = "service_unavailable"
    reason = "unavailable"


class DrainingError(ServiceUnavailableError):
    default_code = "draining"
    reason = "draining"


class EngineDeadError(ServiceUnavailableError):
    default_code = "engine_dead"
    reason = "engine_dead"


class RequestTimeoutError(APIError):
    status = 504
    type = "api_error"
    default_code = "request_timeout"
    reason = "timeout"


REJECTION_REASONS = tuple(
    dict.fromkeys(
        cls.reason
        for cls in (
            AuthenticationError,
            OverloadedError,
            RateLimitedError,
            DrainingError,
            EngineDeadError,
            ServiceUnavailableError,
            RequestTimeoutError,
            EngineFailedError,
            BadRequestError,
            NotFoundError,
            ContentTooLargeError,
        )
        if cls.reason is not None
    )
)
"""Every reason a request is counted as rejected under (a series exists before the first)."""

_LIBRARY_ERRORS: dict[type[Exception], type[APIError]] = {
    grammars.SchemaError: SchemaError,
    grammars.UnsupportedError: UnsupportedError,
    grammars.RequestError: BadRequestError,
    grammars.CompilerUnavailableError: ServiceUnavailableError,
}


def from_library(exc: grammars.GrammarError) -> APIError:
    """The client-visible error for an error that a library raised about a request."""
    for kind, api_error in _LIBRARY_ERRORS.items():
        if isinstance(exc, kind):
            return api_error(str(exc), param=exc.param)
    return InternalError(str(exc))
