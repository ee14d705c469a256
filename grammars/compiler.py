"""Prove a constraint can be enforced, in bounded time, before the engine sees it.

One :class:`GrammarCompiler` per served model (one tokenizer, one backend). What ``check``
does depends on the backend (:attr:`~grammars.backends.Backend.compiles_in_worker`):

* **In the worker** (Outlines, XGrammar: their builds have no bound of their own): the shape
  goes to a worker process (:mod:`grammars.worker`) that builds the grammar the way vLLM will,
  and is killed if that takes longer than ``timeout`` (SchemaError). One compile at a time:
  jobs queue for the compiler's single thread, which does the blocking pipe I/O, so the event
  loop never waits on it. The engine builds the grammar again, in its own process; its own
  limit for Outlines is ``VLLM_REGEX_COMPILATION_TIMEOUT_S`` (set it above ``timeout``).
* **Frontend only** (llguidance, which bounds its own work): vLLM's frontend validation runs in
  a small thread pool, so a request with a new schema never waits behind another's; the
  grammar is built once, by the engine, for the request. No worker process is started.

Either way verdicts are cached by a hash of the backend and shape in a bounded LRU, failures
included (a schema that timed out once would time out again), and identical schemas in
flight share one check. A client that disconnects does not cancel a compile: the worker must
finish (or be killed) before it can take the next job, and the verdict is cached.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from grammars.backends import backend as backend_named
from grammars.constraints import Constraint
from grammars.engine_check import frontend_check
from grammars.errors import CompilerUnavailableError, SchemaError
from grammars.shape import Shape
from grammars.worker import CompileResult, CompileWorker, WorkerStartError

__all__ = ["GrammarCompiler", "shape_key"]

log = logging.getLogger(__name__)

_JSON_MODE = Shape(content="object")
_MAX_ERROR_CHARS = 500


def shape_key(backend: str, shape: Shape) -> str:
    """A stable hash of what will be compiled (the encoding is a function of both)."""
    text = json.dumps([backend, dataclasses.asdict(shape)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class GrammarCompiler:
    """Compile-checks and caches the grammars of one model's requests."""

    def __init__(
        self,
        tokenizer: str | os.PathLike[str] | Any,
        *,
        backend: str,
        timeout: float = 10.0,
        cache_size: int = 256,
        cache_bytes: int = 64 * 2**20,
        vocab_size: int | None = None,
        memory_headroom_mb: int = 4096,
        startup_timeout: float = 300.0,
        warmup: bool = True,
        in_worker: bool | None = None,
    ) -> None:
        """``tokenizer``: the folder vLLM loads the model's tokenizer from, or the loaded
        tokenizer (its ``name_or_path`` is used: the worker loads its own copy);
        ``timeout``: seconds one compile may take; ``vocab_size``: the model's (embedding)
        vocabulary size, default the tokenizer's; ``memory_headroom_mb``: memory a compile may
        use beyond the loaded worker's; ``warmup``: compile JSON mode (``json_object``) in
        :meth:`start` within ``startup_timeout`` instead of ``timeout``, since every JSON-mode
        request shares that grammar and Outlines needs seconds for it on a 128k vocabulary;
        ``in_worker``: build every grammar in the worker (default: the backend's
        ``compiles_in_worker``; the schema benchmark forces it to time the engine's build)."""
        spec = backend_named(backend)
        self.in_worker = spec.compiles_in_worker if in_worker is None else in_worker
        self.backend = backend
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self.warmup = warmup
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._cached_bytes = 0
        self._worker = CompileWorker(
            backend,
            _tokenizer_path(tokenizer),
            vocab_size=vocab_size,
            memory_headroom_mb=memory_headroom_mb,
            startup_timeout_s=startup_timeout,
        )
        # In the worker, one thread runs every job in order: the queue of waiting compiles, off
        # the event loop and bound to no particular loop. Frontend checks are short and
        # independent: two threads, so one schema's check never waits for another's.
        self._executor = ThreadPoolExecutor(
            max_workers=1 if self.in_worker else 2, thread_name_prefix=f"grammar-{backend}"
        )
        self._warm = False
        self._starting: Future[CompileResult | None] | None = None
        self._cache: OrderedDict[str, CompileResult] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[CompileResult]] = {}
        self.hits = 0
        self.misses = 0

    def spawn(self) -> None:
        """Start the worker and its warm-up now, in the compile thread, and return at once
        (at server start-up they overlap the engine's loading); :meth:`start` waits for them.
        Without a worker (``in_worker`` false) there is nothing to start."""
        if self._starting is None and self.in_worker:
            self._starting = self._executor.submit(self._start)

    async def start(self) -> None:
        """Start the worker, build its vocabulary and warm up; raises WorkerStartError.

        Call it at server start-up: a bad tokenizer path fails there, and the first request
        does not wait for the worker. Otherwise the first compile calls it.
        """
        if not self.in_worker:
            return
        self.spawn()
        assert self._starting is not None
        try:
            warm = await asyncio.wrap_future(self._starting)
        except BaseException:
            self._starting = None  # the next call tries again
            raise
        if warm is not None:
            self._remember(shape_key(self.backend, _JSON_MODE), warm)
        # Later calls: a worker restarted since (after a timeout or a crash) is ready too.
        await asyncio.get_running_loop().run_in_executor(self._executor, self._worker.wait_ready)

    def _start(self) -> CompileResult | None:
        started = time.monotonic()
        self._worker.wait_ready()
        if not self.warmup or self._warm:
            return None
        self._warm = True
        result = self._worker.run(_JSON_MODE, self.startup_timeout)
        log.info(
            "grammar worker ready",
            extra={
                "backend": self.backend,
                "seconds": round(time.monotonic() - started, 1),
                "json_mode_compile_s": round(result.seconds, 2),
                "json_mode_ok": result.ok,
            },
        )
        return result

    async def check(self, constraint: Constraint) -> Constraint:
        """Prove ``constraint`` compiles within ``timeout`` and set its ``structured_outputs``
        (in place; also returned), or raise SchemaError naming its param."""
        if constraint.backend != self.backend:
            raise ValueError(f"a {constraint.backend} constraint sent to a {self.backend} compiler")
        try:
            result = await self.compile(constraint.shape)
        except WorkerStartError as exc:
            raise CompilerUnavailableError(
                "Structured outputs are unavailable: the grammar compiler could not start."
            ) from exc
        if not result.ok:
            raise SchemaError(_message(constraint, result), param=constraint.param)
        # A fresh copy per request: vLLM writes its chosen backend into the parameters.
        constraint.structured_outputs = copy.copy(result.params)
        return constraint

    async def compile(self, shape: Shape) -> CompileResult:
        """The verdict on ``shape`` (cached or fresh); never raises for a bad shape."""
        key = shape_key(self.backend, shape)
        if (hit := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return dataclasses.replace(hit, cached=True)
        future = self._inflight.get(key)
        if future is None:
            self.misses += 1
            future = asyncio.ensure_future(self._compile(key, shape))
            self._inflight[key] = future
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(future)

    async def _compile(self, key: str, shape: Shape) -> CompileResult:
        loop = asyncio.get_running_loop()
        if self.in_worker:
            if self.warmup and not self._warm:
                await self.start()
            result = await loop.run_in_executor(
                self._executor, self._worker.run, shape, self.timeout
            )
        else:
            result = await loop.run_in_executor(self._executor, _frontend, self.backend, shape)
        self._remember(key, result)
        if not result.ok:
            level = logging.WARNING if result.timed_out or result.crashed else logging.INFO
            log.log(
                level,
                "grammar refused",
                extra={
                    "backend": self.backend,
                    "key": key[:16],
                    "timed_out": result.timed_out,
                    "crashed": result.crashed,
                    "error": (result.error or "")[:200],
                },
            )
        return result

    def _remember(self, key: str, result: CompileResult) -> None:
        """Cache writes happen on the event loop's thread only. Bounded in entries and in
        bytes: one Outlines regex may be a mebibyte."""
        old = self._cache.pop(key, None)
        if old is not None:
            self._cached_bytes -= _size(old)
        self._cache[key] = result
        self._cached_bytes += _size(result)
        while self._cache and (
            len(self._cache) > self.cache_size or self._cached_bytes > self.cache_bytes
        ):
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= _size(evicted)

    @property
    def cached_bytes(self) -> int:
        """What the cached verdicts hold: their grammars' and errors' text."""
        return self._cached_bytes

    @property
    def restarts(self) -> int:
        """Times the worker was killed (timeout) or died (crash) and was restarted."""
        return self._worker.restarts

    def close(self) -> None:
        """Stop the worker for good; a compile in progress ends with WorkerStartError."""
        self._worker.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> GrammarCompiler:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


def _frontend(backend: str, shape: Shape) -> CompileResult:
    """The request's parameters and vLLM's verdict on them, without building the grammar."""
    started = time.perf_counter()
    try:
        params = backend_named(backend).encode(shape)
        frontend_check(backend, params)
    except Exception as exc:  # vLLM and the grammar libraries raise many kinds for a bad grammar
        return CompileResult(False, time.perf_counter() - started, error=str(exc) or repr(exc))
    return CompileResult(True, time.perf_counter() - started, params=params)


def _tokenizer_path(tokenizer: str | os.PathLike[str] | Any) -> str:
    if isinstance(tokenizer, str | os.PathLike):
        return os.fspath(tokenizer)
    path = getattr(tokenizer, "name_or_path", None)
    if not path:
        raise ValueError("the tokenizer has no name_or_path: pass the folder it came from")
    return str(path)


def _message(constraint: Constraint, result: CompileResult) -> str:
    if constraint.kind in ("json_object", "json_schema"):
        what = "the response_format schema"
    elif constraint.shape.content in ("object", "schema"):
        what = "the grammar built from tools and response_format"
    else:
        what = "the tool-call grammar built from tools"
    if result.timed_out:
        return f"{what} is too complex to compile within {result.seconds:g} s"
    if result.crashed:
        return f"{what} is too complex to compile (the grammar compiler ran out of memory)"
    error = result.error or "unknown error"
    if len(error) > _MAX_ERROR_CHARS:  # some backends quote the whole offending subschema
        error = error[:_MAX_ERROR_CHARS] + "..."
    return f"{what} cannot be enforced by the {constraint.backend} backend: {error}"


def _size(result: CompileResult) -> int:
    """The bytes a verdict keeps alive: its grammar's text (whichever field the backend
    uses) and its error."""
    params = result.params
    texts = [result.error or ""]
    if params is not None:
        texts += [
            params.regex or "",
            params.grammar or "",
            params.structural_tag or "",
            json.dumps(params.json) if params.json is not None else "",
        ]
    return sum(len(text) for text in texts)
