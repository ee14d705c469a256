"""The adapter between the server and vLLM's in-process async engine (``AsyncLLM``).

The server drives the engine only through this module: starting it, generating, its health
and stats. (``sampling`` and ``grammars`` build vLLM's request parameters, and the chat
service reads vLLM's output objects.) The engine core runs in a child process; generation
streams deltas. With several API processes (``--api-processes``) the supervisor starts the
engine core and each API process's ``Engine`` is one client of it (:class:`SharedCore`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch
from vllm import RequestOutput, SamplingParams
from vllm.config import VllmConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs.engine import tokens_input
from vllm.platforms import current_platform
from vllm.usage.usage_lib import UsageContext
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

from grammars import backend
from server.errors import EngineDeadError
from server.models.config import ModelConfig, check_parallelism

__all__ = [
    "TIER_PRIORITY",
    "Engine",
    "SharedCore",
    "engine_args",
    "engine_config",
    "on_gpu",
    "visible_gpus",
]

log = logging.getLogger(__name__)

TIER_PRIORITY = {"priority": -1, "default": 0, "flex": 1}
"""A service tier's priority in vLLM's scheduler, which takes the lowest value first (ties in
order of arrival): priority before default before flex. A running request keeps its slot: a
higher tier overtakes the queue, not the requests already generating."""


def on_gpu() -> bool:
    """True on a CUDA build of vLLM with a GPU present."""
    return current_platform.is_cuda_alike()


def visible_gpus() -> int:
    return torch.cuda.device_count()


def engine_args(
    config: ModelConfig, model_path: str, *, structured_backend: str, gpu: bool
) -> dict[str, Any]:
    """The keyword arguments of ``AsyncEngineArgs`` for ``config``: pure, so tests can check
    what vLLM would receive for every config file without starting it."""
    args: dict[str, Any] = {
        "model": model_path,
        "served_model_name": config.id,
        "max_model_len": config.context_length,
        "dtype": config.dtype,
        "tensor_parallel_size": config.tensor_parallel_size,
        "pipeline_parallel_size": config.pipeline_parallel_size,
        "max_num_seqs": config.max_num_seqs,
        "enforce_eager": config.enforce_eager,
        "stream_interval": config.stream_interval,
        "structured_outputs_config": {
            "backend": structured_backend,
            **backend(structured_backend).engine_options,
        },
        # Waiting requests are taken by service tier (TIER_PRIORITY), then by arrival.
        "scheduling_policy": "priority",
        # Sampling defaults are ours (sampling.DEFAULTS), never the checkpoint's.
        "generation_config": "vllm",
        # Stats on: per-request timestamps feed time_info and the Prometheus metrics.
        "disable_log_stats": False,
        "enable_log_requests": False,
    }
    if config.quantization:
        args["quantization"] = config.quantization
    if config.load_format != "auto":
        args["load_format"] = config.load_format
    if config.distributed_executor_backend:
        args["distributed_executor_backend"] = config.distributed_executor_backend
    if gpu:
        args["gpu_memory_utilization"] = config.gpu_memory_utilization
    else:
        # vLLM CPU sizes its KV cache from a share of all memory and refuses to start when
        # that share is not free; an explicit size fits the server beside its tests.
        args["kv_cache_memory_bytes"] = int(config.kv_cache_gib * 2**30)
    return args


def engine_config(
    config: ModelConfig,
    model_path: str,
    *,
    structured_backend: str,
    api_processes: int = 1,
    api_process: int = 0,
) -> VllmConfig:
    """vLLM's whole configuration for ``config``: in the supervisor of several API processes
    (``api_process`` -1, as ``vllm serve --api-server-count`` does) or in one of them."""
    gpu = on_gpu()
    if gpu:
        check_parallelism(config, visible_gpus())
    kwargs = engine_args(config, model_path, structured_backend=structured_backend, gpu=gpu)
    args = AsyncEngineArgs(**kwargs)
    args._api_process_count = api_processes
    args._api_process_rank = api_process
    return args.create_engine_config(UsageContext.OPENAI_API_SERVER)


@dataclass(frozen=True)
class SharedCore:
    """An engine core the supervisor started, which this API process is one client of."""

    addresses: dict[str, Any]
    """vLLM's ``client_addresses``: this client's ZMQ listeners and addresses."""
    count: int
    index: int
    dead: Any
    """A ``multiprocessing.Event`` the supervisor sets when the engine core died."""
    supervisor: int
    """The supervisor's pid: if it is gone, so is the engine core."""


class Engine:
    """One served model's ``AsyncLLM``."""

    def __init__(
        self,
        config: ModelConfig,
        model_path: str,
        *,
        structured_backend: str,
        core: SharedCore | None = None,
    ) -> None:
        self.config = config
        started = time.monotonic()
        gpu = on_gpu()
        if core is None:
            if gpu:
                check_parallelism(config, visible_gpus())
            kwargs = engine_args(config, model_path, structured_backend=structured_backend, gpu=gpu)
            self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        else:
            vllm_config = engine_config(
                config,
                model_path,
                structured_backend=structured_backend,
                api_processes=core.count,
                api_process=core.index,
            )
            self._llm = AsyncLLM.from_vllm_config(
                vllm_config,
                usage_context=UsageContext.OPENAI_API_SERVER,
                client_addresses=dict(core.addresses),
                client_count=core.count,
                client_index=core.index,
            )
            threading.Thread(
                target=_watch_core, args=(self._llm, core), daemon=True, name="core-watch"
            ).start()
        self.tokenizer = self._llm.tokenizer
        self.load_seconds = time.monotonic() - started
        cache = self._llm.vllm_config.cache_config
        self.kv_cache_blocks = cache.num_gpu_blocks
        self.kv_cache_tokens = (cache.num_gpu_blocks or 0) * cache.block_size
        log.info(
            "engine ready",
            extra={
                "model": config.id,
                "seconds": round(self.load_seconds, 1),
                "device": "gpu" if gpu else "cpu",
                "kv_cache_blocks": cache.num_gpu_blocks,
                "block_size": cache.block_size,
                "kv_cache_tokens": self.kv_cache_tokens,
                # How many full-context requests fit in the KV cache at once.
                "max_full_context_requests": round(self.kv_cache_tokens / config.context_length, 1),
                "max_num_seqs": config.max_num_seqs,
                "tp": config.tensor_parallel_size,
                "pp": config.pipeline_parallel_size,
                "executor": config.distributed_executor_backend or "mp",
                "quantization": config.quantization,
            },
        )

    async def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: str,
        *,
        tier: str = "default",
    ) -> AsyncIterator[RequestOutput]:
        """Stream ``RequestOutput`` deltas; closing the iterator aborts the request. A dead
        engine core raises our ``EngineDeadError`` (503 ``engine_dead``), not vLLM's.
        ``tier`` (a key of TIER_PRIORITY) orders the request in the engine's queue."""
        # Already tokenized: a rendered input goes straight to the engine (a raw prompt would
        # take a hop through vLLM's tokenizer thread pool first).
        stream = self._llm.generate(
            tokens_input(prompt_ids), params, request_id, priority=TIER_PRIORITY[tier]
        )
        try:
            async for out in stream:
                yield out
        except VllmEngineDeadError as exc:
            raise EngineDeadError("The engine has stopped; this server is restarting.") from exc
        finally:
            await stream.aclose()  # on early close: vLLM aborts the request

    @property
    def alive(self) -> bool:
        return not self._llm.errored

    @property
    def unfinished_requests(self) -> int:
        """Requests the engine holds (running or queued) for this server."""
        return self._llm.get_num_unfinished_requests()

    async def log_stats(self) -> None:
        await self._llm.do_log_stats()

    def shutdown(self) -> None:
        self._llm.shutdown()


def _watch_core(llm: AsyncLLM, core: SharedCore) -> None:
    """A client of a core it did not start learns of the core's death from the supervisor,
    then does what vLLM's own monitor does for a core it started (MPClient's
    ``monitor_engine_cores``): requests in flight fail with EngineDeadError and ``errored``
    turns true."""
    while not core.dead.wait(0.5):
        if os.getppid() != core.supervisor:
            break
    client = llm.engine_core
    client.resources.engine_dead = True
    client.shutdown()
