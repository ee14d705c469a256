"""Every model config in configs/ loads, validates and maps onto the engine arguments vLLM
would get on a GPU node; bad configs are refused naming the file and the field. No GPU needed:
``AsyncEngineArgs`` is a dataclass, building it starts nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from server.models.config import (
    ConfigError,
    ModelConfig,
    available_models,
    check_parallelism,
    load_model_config,
)
from server.models.engine import engine_args

CONFIGS = available_models()

# name: (id, tensor parallel, pipeline parallel, executor, quantization, load format)
LAYOUTS: dict[str, tuple[str, int, int, str | None, str | None, str]] = {
    "llama3.1-8b": ("llama3.1-8b", 1, 1, None, None, "auto"),
    "llama3.1-8b-dummy": ("llama3.1-8b", 1, 1, None, None, "dummy"),
    "llama3.1-70b": ("llama3.1-70b", 8, 1, None, None, "auto"),
    "llama3.1-70b-dummy": ("llama3.1-70b", 8, 1, None, None, "dummy"),
    "llama3.1-70b-fp8-h200": ("llama3.1-70b", 1, 1, None, "fp8_per_channel", "auto"),
    "llama3.1-70b-fp8-2xh100": ("llama3.1-70b", 2, 1, None, "fp8_per_channel", "auto"),
    "llama3.1-70b-2nodes": ("llama3.1-70b", 8, 2, "ray", None, "auto"),
    # Llama 3.3 70B: Llama 3.1 70B's architecture and chat format, the same layouts.
    "llama-3.3-70b": ("llama-3.3-70b", 8, 1, None, None, "auto"),
    "llama-3.3-70b-fp8-h200": ("llama-3.3-70b", 1, 1, None, "fp8_per_channel", "auto"),
    "llama-3.3-70b-fp8-2xh100": ("llama-3.3-70b", 2, 1, None, "fp8_per_channel", "auto"),
    "llama-3.3-70b-2nodes": ("llama-3.3-70b", 8, 2, "ray", None, "auto"),
}


def test_the_documented_layouts_exist() -> None:
    assert set(LAYOUTS) <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_maps_onto_gpu_engine_args(name: str) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs

    config = load_model_config(name)
    kwargs = engine_args(config, "/models/x", structured_backend="xgrammar", gpu=True)
    assert kwargs["served_model_name"] == config.id
    assert kwargs["tensor_parallel_size"] == config.tensor_parallel_size
    assert kwargs["pipeline_parallel_size"] == config.pipeline_parallel_size
    assert kwargs["gpu_memory_utilization"] == config.gpu_memory_utilization
    assert "kv_cache_memory_bytes" not in kwargs  # the CPU-only sizing
    args = AsyncEngineArgs(**kwargs)  # vLLM accepts every keyword and value
    assert args.max_model_len == config.context_length


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_gpu_layouts(name: str) -> None:
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    model_id, tp, pp, executor, quantization, load_format = LAYOUTS[name]
    kwargs = engine_args(load_model_config(name), "/m", structured_backend="outlines", gpu=True)
    assert kwargs["served_model_name"] == model_id  # Cerebras's ids, whatever the layout
    assert (kwargs["tensor_parallel_size"], kwargs["pipeline_parallel_size"]) == (tp, pp)
    assert kwargs.get("distributed_executor_backend") == executor
    assert kwargs.get("quantization") == quantization
    assert kwargs.get("load_format", "auto") == load_format
    if quantization:
        assert quantization in QUANTIZATION_METHODS


def test_cpu_engine_args_size_the_kv_cache() -> None:
    kwargs = engine_args(
        load_model_config("smollm2-135m"), "/m", structured_backend="guidance", gpu=False
    )
    assert kwargs["kv_cache_memory_bytes"] == 2**30
    assert "gpu_memory_utilization" not in kwargs


def test_engine_schedules_by_service_tier() -> None:
    """vLLM takes the lowest priority value first: priority, then default, then flex. The
    engine arguments are valid for vLLM's own argument class."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from server.models.engine import TIER_PRIORITY

    kwargs = engine_args(
        load_model_config("smollm2-135m"), "/m", structured_backend="guidance", gpu=False
    )
    assert kwargs["scheduling_policy"] == "priority"
    assert AsyncEngineArgs(**kwargs).scheduling_policy == "priority"
    assert TIER_PRIORITY["priority"] < TIER_PRIORITY["default"] < TIER_PRIORITY["flex"]


BASE = {
    "id": "m",
    "source": "huggingface",
    "weights": "org/repo",
    "chat_format": "llama3",
    "context_length": 8192,
}
BAD: list[tuple[str, dict[str, Any], list[str]]] = [
    ("tp zero", {"tensor_parallel_size": 0}, ["tensor_parallel_size"]),
    ("unknown quantization", {"quantization": "int4"}, ["quantization"]),
    ("unknown field", {"tensor_parallel": 2}, ["tensor_parallel"]),
    ("missing chat format", {"chat_format": None}, ["chat_format"]),
    ("pp without executor", {"pipeline_parallel_size": 2}, ["distributed_executor_backend"]),
    ("16 GPUs without ray", {"tensor_parallel_size": 16}, ["ray"]),
    ("ray misspelt", {"distributed_executor_backend": "rey"}, ["distributed_executor_backend"]),
    ("dummy off the hub", {"source": "local", "load_format": "dummy"}, ["dummy"]),
    ("missing architecture", {"load_format": "dummy", "architecture": "nope.json"}, ["nope"]),
    ("memory share over 1", {"gpu_memory_utilization": 1.5}, ["gpu_memory_utilization"]),
    ("bad id", {"id": "llama 3.1"}, ["id"]),
    # The id names the model's cache folder, which the store removes and rebuilds.
    ("current folder id", {"id": "."}, ["id"]),
    ("parent folder id", {"id": ".."}, ["id"]),
    ("hidden id", {"id": ".cache"}, ["id"]),
]


@pytest.mark.parametrize(("name", "patch", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_file_and_field(
    tmp_path: Path, name: str, patch: dict[str, Any], words: list[str]
) -> None:
    import yaml

    data = {k: v for k, v in (BASE | patch).items() if v is not None}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as error:
        load_model_config(str(path))
    message = str(error.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_not_yaml_and_unknown_names(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("id: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_config(str(path))
    with pytest.raises(ConfigError, match=r"llama3\.1-70b-2nodes"):  # lists the known ones
        load_model_config("llama3.1-405b")


def layout(tp: int, pp: int = 1, executor: str | None = None) -> ModelConfig:
    backend = executor or ("mp" if pp > 1 else None)
    return ModelConfig(
        **BASE,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        distributed_executor_backend=backend,
    )


def test_parallelism_against_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    check_parallelism(layout(8), visible_gpus=8)
    check_parallelism(layout(2, 2), visible_gpus=4)
    with pytest.raises(ConfigError, match=r"tensor_parallel_size 8 .* needs 8 GPUs .* shows 4"):
        check_parallelism(layout(8), visible_gpus=4)
    with pytest.raises(ConfigError, match="needs 4 GPUs but this node shows 2"):
        check_parallelism(layout(2, 2), visible_gpus=2)
    with pytest.raises(ConfigError, match="shows 0"):
        check_parallelism(layout(1), visible_gpus=0)
    # With Ray the stages span nodes: this node's count does not bound them, but Ray must exist.
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    check_parallelism(layout(8, 2, "ray"), visible_gpus=8)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="needs the 'ray' package"):
        check_parallelism(layout(8, 2, "ray"), visible_gpus=8)


def test_stream_interval_reaches_the_engine() -> None:
    """The setting (over a model's own) is vLLM's scheduler stream_interval, which its output
    processor applies in each API process."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from server.cli import prepare_models
    from server.settings import Settings

    config = load_model_config("smollm2-135m")
    assert config.stream_interval == 1
    grouped = config.model_copy(update={"stream_interval": 4})
    kwargs = engine_args(grouped, "/m", structured_backend="guidance", gpu=False)
    assert AsyncEngineArgs(**kwargs).stream_interval == 4
    ((prepared, _),) = prepare_models(Settings(model=["smollm2-135m"], stream_interval=3))
    assert prepared.stream_interval == 3
