"""The FastAPI application: lifespan (load models, stop engines), error mapping, routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import APIError, BadRequestError, InternalError, NotFoundError
from server.metrics import watch_pool
from server.routes import router

__all__ = ["create_app", "error_response"]

log = logging.getLogger(__name__)


def create_app(load_service: Callable[[], Any]) -> FastAPI:
    """``load_service`` builds the ChatService (loading engines) when the app starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.monotonic()
        app.state.service = await asyncio.to_thread(load_service)
        watch_pool(app.state.service.pool)
        stats_task = asyncio.create_task(_log_stats(app))
        routes = sorted(getattr(r, "path", "") for r in app.routes)
        log.info(
            "ready",
            extra={
                "seconds": round(time.monotonic() - started, 1),
                "models": [m.id for m in app.state.service.pool],
                "routes": routes,
            },
        )
        try:
            yield
        finally:
            stats_task.cancel()
            for model in app.state.service.pool:
                model.engine.shutdown()

    app = FastAPI(title="llama-serve", version="0.1.0", lifespan=lifespan)
    app.include_router(router)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


async def _log_stats(app: FastAPI) -> None:
    """vLLM's stat loggers (Prometheus gauges, throughput lines) update when asked to."""
    while True:
        await asyncio.sleep(10)
        for model in app.state.service.pool:
            with contextlib.suppress(Exception):
                await model.engine.log_stats()


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 becomes OpenAI's 400, naming the first offending parameter."""
    assert isinstance(exc, RequestValidationError)
    return error_response(validation_to_api_error(exc.errors()))


def validation_to_api_error(errors: Any) -> BadRequestError:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [p for p in first.get("loc", ()) if p != "body"]
    param = _param_path(loc)
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return BadRequestError(f"Unrecognized request argument supplied: {param}", param=param)
    if kind in ("json_invalid", "model_attributes_type") and not loc:
        return BadRequestError("The request body is not a valid JSON object.", param=None)
    if kind == "missing":
        return BadRequestError(f"Missing required parameter: '{param}'.", param=param)
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return BadRequestError(f"Invalid value for '{param}': {msg}", param=param or None)


def _param_path(loc: list[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not str(part).startswith(("function-", "json-", "str", "list[", "literal[")):
            # pydantic adds union-branch names to locations; they are not parameters.
            path += f".{part}" if path else str(part)
    return path


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        err: APIError = NotFoundError(f"Unknown path: {request.url.path}", code="not_found")
        return error_response(err)
    body = {
        "error": {
            "message": str(exc.detail),
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # A server bug: log the traceback, never send it.
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(InternalError("The server had an error processing your request."))
