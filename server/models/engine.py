"""The adapter between the server and vLLM's in-process async engine (``AsyncLLM``).

The server drives the engine only through this module: starting it, generating, its health
and stats. (``sampling`` and ``grammars`` build vLLM's request parameters, and the chat
service reads vLLM's output objects.) The engine core runs in a child process; generation
streams deltas.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import torch
from vllm import RequestOutput, SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs.engine import tokens_input
from vllm.platforms import current_platform
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

from grammars import backend
from server.errors import EngineDeadError
from server.models.config import ModelConfig, check_parallelism

__all__ = ["TIER_PRIORITY", "Engine", "engine_args", "on_gpu", "visible_gpus"]

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


class Engine:
    """One served model's ``AsyncLLM``."""

    def __init__(self, config: ModelConfig, model_path: str, *, structured_backend: str) -> None:
        self.config = config
        started = time.monotonic()
        gpu = on_gpu()
        if gpu:
            check_parallelism(config, visible_gpus())
        kwargs = engine_args(config, model_path, structured_backend=structured_backend, gpu=gpu)
        self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
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
