"""The FastAPI application: lifespan (load models, stop engines), the front-door middleware,
error mapping, routes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm import envs as vllm_envs
from vllm.utils.gc_utils import freeze_gc_heap

from grammars import GrammarError
from server.chat.service import ChatService
from server.completions.service import CompletionService
from server.errors import (
    APIError,
    BadRequestError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    from_library,
)
from server.http.admission import Admission
from server.http.auth import ApiKeys
from server.http.control import RequestControl
from server.http.gate import Gate, request_record
from server.http.openapi import document_api
from server.http.ratelimit import RateLimiter
from server.http.request_limits import RequestLimits
from server.http.routes import router
from server.lifecycle import Lifecycle, watch_engines
from server.metrics import multiprocess, publish_live_gauges, watch_pool
from server.models.pool import ServedModel
from server.settings import Settings

if TYPE_CHECKING:
    from server.processes import ProcessGroup

__all__ = ["create_app", "error_response"]

log = logging.getLogger(__name__)


def create_app(
    load_service: Callable[[], ChatService],
    settings: Settings | None = None,
    group: ProcessGroup | None = None,
) -> FastAPI:
    """``load_service`` builds the ChatService (loading engines) when the app starts;
    ``group``: the API processes this one shares its limits with (``--api-processes``)."""
    settings = settings or Settings()
    lifecycle = Lifecycle(drain_timeout=settings.drain_timeout)
    keys = ApiKeys.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.monotonic()
        service = app.state.service = await asyncio.to_thread(load_service)
        app.state.completions = CompletionService(service.pool)
        # JSON mode's grammar, in the compile worker and in the engine, before the first
        # request, so that request does not pay for it.
        await service.warm_up()
        admission = Admission.for_models(
            service.pool,
            settings.max_waiting_requests,
            shared=group.admission_stats([m.id for m in service.pool]) if group else None,
        )
        app.state.control = RequestControl(
            admission=admission,
            limiter=RateLimiter(
                requests_per_day=settings.rate_limit_requests_per_day,
                tokens_per_minute=settings.rate_limit_tokens_per_minute,
                uncached_tokens_per_minute=settings.rate_limit_uncached_tokens_per_minute,
                shared=group.shared_windows() if group else None,
            ),
            request_timeout=settings.request_timeout,
            log_prompts=settings.log_prompts,
        )
        watch_pool(service.pool, admission, lifecycle)
        stats_task = asyncio.create_task(_log_stats(app))
        watchdog = asyncio.create_task(watch_engines(service.pool, lifecycle))
        gauges = asyncio.create_task(publish_live_gauges()) if multiprocess() else None
        # As vLLM's own front end does: the startup heap (torch, vLLM, the tokenizer: about a
        # million objects) lives as long as the process, and each full collection that walked
        # it stopped the event loop, and so every stream, for up to half a second under load.
        freeze_gc_heap()
        # vLLM reads its environment variables anew at each use (2.4 us a read here); its
        # engine core caches them once started, and so does this process once it is: one read
        # per generated token in vLLM's output statistics alone. None is set after this.
        vllm_envs.enable_envs_cache()
        log.info(
            "ready",
            extra={
                "seconds": round(time.monotonic() - started, 1),
                "models": [_describe(m, admission) for m in service.pool],
                "api_keys": len(keys),
                "gc_frozen_objects": gc.get_freeze_count(),
                "vllm_envs_cached": vllm_envs._is_envs_cache_enabled(),
                "routes": sorted(getattr(r, "path", "") for r in app.routes),
            },
        )
        try:
            yield
        finally:
            vllm_envs.disable_envs_cache()  # an app started again here (tests) reads anew
            stats_task.cancel()
            watchdog.cancel()
            if gauges is not None:
                gauges.cancel()
            for model in service.pool:
                model.engine.shutdown()
                if model.grammar is not None:
                    model.grammar.close()

    app = FastAPI(title="llama-serve", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.lifecycle = lifecycle
    app.include_router(router)
    # Inside the Gate (keys are checked first): 413, 431, too-deep JSON before any parsing.
    app.add_middleware(RequestLimits, settings=settings)
    document_api(app)  # error envelopes and the event stream in /openapi.json
    app.add_middleware(Gate, keys=keys, lifecycle=lifecycle, metrics_public=settings.metrics_public)
    if group is not None:
        from server.processes import ProcessHeader

        app.add_middleware(ProcessHeader, index=group.index)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(GrammarError, _library_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


def _describe(model: ServedModel, admission: Admission) -> dict[str, Any]:
    config = model.config
    return {
        "id": model.id,
        "tp": config.tensor_parallel_size,
        "pp": config.pipeline_parallel_size,
        "max_num_seqs": config.max_num_seqs,
        "admission_limit": admission.limits.get(model.id),
        "kv_cache_tokens": getattr(model.engine, "kv_cache_tokens", None),
    }


async def _log_stats(app: FastAPI) -> None:
    """vLLM's stat loggers (Prometheus gauges, throughput lines) update when asked to."""
    while True:
        await asyncio.sleep(10)
        for model in app.state.service.pool:
            with contextlib.suppress(Exception):
                await model.engine.log_stats()


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _answer(request: Request, error: APIError) -> JSONResponse:
    request_record(request).note_error(error)
    return error_response(error)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return _answer(request, exc)


async def _library_error(request: Request, exc: Exception) -> JSONResponse:
    """What ``grammars`` raised about the request, as the client-visible error."""
    assert isinstance(exc, GrammarError)
    return _answer(request, from_library(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 becomes OpenAI's 400, naming the first offending parameter."""
    assert isinstance(exc, RequestValidationError)
    return _answer(request, validation_to_api_error(exc.errors()))


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
    if kind == "array_above_max_length":
        return BadRequestError(f"Invalid '{param}': {first['msg']}", param=param, code=kind)
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return BadRequestError(f"Invalid value for '{param}': {msg}", param=param or None)


_UNION_BRANCH = re.compile(
    r"(?:str|bool|int|float|none|(?:function|json)-.*|(?:list|literal|dict|tuple|union)\[.*\])"
)
"""pydantic names the branch of a union in an error's location; it is not a parameter."""


def _param_path(loc: list[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _UNION_BRANCH.fullmatch(str(part)):
            path += f".{part}" if path else str(part)
    return path


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (no route, wrong method, an unreadable body) in our envelope."""
    assert isinstance(exc, StarletteHTTPException)
    error: APIError
    if exc.status_code == 404:
        error = NotFoundError(f"Unknown path: {request.url.path}", code="not_found")
    elif exc.status_code == 405:
        error = MethodNotAllowedError(str(exc.detail), headers=exc.headers)
    elif exc.status_code < 500:
        error = BadRequestError(str(exc.detail), headers=exc.headers)
    else:
        error = InternalError(str(exc.detail))
    return _answer(request, error)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # A server bug: log the traceback, never send it.
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(InternalError("The server had an error processing your request."))
