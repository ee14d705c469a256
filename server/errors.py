"""One exception hierarchy for every error a client can see.

Each class carries its HTTP status and OpenAI error ``type``; ``server.app`` maps them to the
``{"error": {...}}`` envelope in one handler, and a stream renders the same body as a data event.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ContentTooLargeError",
    "EngineDeadError",
    "FailedGenerationError",
    "InternalError",
    "ModelNotFoundError",
    "NotFoundError",
    "OverloadedError",
    "RequestTimeoutError",
    "SchemaError",
    "ServiceUnavailableError",
    "UnsupportedError",
]


class APIError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error | self.extra}


class BadRequestError(APIError):
    status = 400
    type = "invalid_request_error"


class UnsupportedError(BadRequestError):
    """A valid request for a feature this server does not offer (yet)."""

    default_code = "unsupported_parameter"


class SchemaError(BadRequestError):
    """A JSON Schema (response_format or a tool) that is invalid or cannot be enforced."""

    default_code = "invalid_schema"


class FailedGenerationError(BadRequestError):
    """Cerebras: JSON mode output that does not parse or validate; carries the text."""

    default_code = "json_validate_failed"

    def __init__(self, message: str, *, failed_generation: str, param: str) -> None:
        super().__init__(message, param=param, failed_generation=failed_generation)


class AuthenticationError(APIError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class NotFoundError(APIError):
    status = 404
    type = "not_found_error"


class ModelNotFoundError(NotFoundError):
    type = "invalid_request_error"
    default_code = "model_not_found"


class ContentTooLargeError(APIError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class OverloadedError(APIError):
    status = 429
    type = "rate_limit_error"
    default_code = "queue_full"


class InternalError(APIError):
    status = 500
    type = "api_error"
    default_code = "internal_error"


class ServiceUnavailableError(APIError):
    status = 503
    type = "api_error"
    default_code = "service_unavailable"


class EngineDeadError(ServiceUnavailableError):
    default_code = "engine_dead"


class RequestTimeoutError(APIError):
    status = 504
    type = "api_error"
    default_code = "request_timeout"
