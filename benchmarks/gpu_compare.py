"""Our server against vLLM's OpenAI server on a GPU, Llama 3.1 8B, in under ten minutes.

``python -m benchmarks.gpu_compare [--out DIR] [--model-dir DIR] [--api-processes 1,2]
[--dry-run]``

Both servers run the same engine release with the same engine arguments (vLLM's flags are
derived from our :func:`server.models.engine.engine_args` for the model config) and the same chat
prompt (our Llama 3.1 layout is given to vLLM as its chat template), so the comparison
measures the serving layers. Weights: the real ones when ``--model-dir`` (or
``$LLAMA31_8B_DIR``) holds safetensors, else random ones of the full architecture
(``load_format: dummy``, ``configs/architectures/llama-3.1-8b-instruct.json``): speed does
not depend on the values of the weights.

Placement: two GPUs give each server its own; one GPU of 44 GiB or more is shared (0.44 of
its memory each, servers started one after the other); a smaller GPU runs the servers one
after the other (``compare --sequential``). With ``--dry-run``, or when ``nvidia-smi`` finds no
GPU, the same flow runs on ``smollm2-135m`` on the CPU with tiny counts.

API-process sweep: the whole comparison once per value of ``--api-processes`` (ours with
``--api-processes N``, vLLM with ``--api-server-count N``; results in ``DIR/api-N/``), each in
its share of the budget, then one table of output throughput and output tokens per API
CPU-second for each N: where one API process caps a GPU, and what more processes buy.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "LLAMA3_CHAT_TEMPLATE",
    "Plan",
    "detect_gpus",
    "main",
    "make_plan",
    "sweep_table",
    "vllm_flags",
]

BUDGET_S = 600.0
"""The whole script, server start-ups included, must end within ten minutes."""
MARGIN_S = 45.0
"""Kept back from the budget for stopping the servers, writing results and plots."""
SHARED_GPU_MIB = 44 * 1024
"""Smallest GPU that holds two copies of the 8B model (16 GB of weights each) plus caches."""

LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set rest = messages[1:] %}{%- else %}{%- set system = '' %}"
    "{%- set rest = messages %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 July 2024\\n\\n' + system }}"
    "{{- '<|eot_id|>' }}"
    "{%- for m in rest %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] }}"
    "{{- '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
"""Our ``llama3`` chat format without tools (Meta's layout: knowledge-cutoff and date lines,
content not stripped), for vLLM; the compare table's prompt-tokens row checks they match."""


@dataclass(frozen=True)
class Plan:
    """Where each server runs and what load they get."""

    mode: str
    """``cpu-dry-run``, ``two-gpus``, ``shared-gpu`` or ``sequential``."""
    config: dict[str, Any]
    """The model config (``configs/`` schema) both servers serve."""
    load: list[str]
    """``compare`` options for the load."""
    api_processes: list[int] = field(default_factory=lambda: [1, 2])
    """The API-process sweep: one comparison per value."""
    ours_prefix: str = ""
    theirs_prefix: str = ""
    ours_flags: list[str] = field(default_factory=list)


def detect_gpus() -> list[tuple[str, int]]:
    """Name and memory (MiB) of each NVIDIA GPU, from ``nvidia-smi``; empty if none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, memory = line.rpartition(",")
        if name.strip() and memory.strip().isdigit():
            gpus.append((name.strip(), int(memory)))
    return gpus


def _llama_config(model_dir: str | None, utilization: float) -> dict[str, Any]:
    real = model_dir is not None and any(Path(model_dir).glob("*.safetensors"))
    weights = {"source": "local", "weights": model_dir} if real else {
        "source": "huggingface", "weights": "meta-llama/Llama-3.1-8B-Instruct",
        "load_format": "dummy", "architecture": "llama-3.1-8b-instruct.json",
    }  # fmt: skip
    return {
        # Its own id for dummy weights: the model cache folder is named after the id.
        "id": "llama3.1-8b" if real else "llama3.1-8b-dummy",
        "description": "Llama 3.1 8B Instruct, GPU benchmark"
        + ("" if real else " (dummy weights)"),
        **weights,
        "chat_format": "llama3",
        "context_length": 8192,
        "dtype": "bfloat16",
        "gpu_memory_utilization": utilization,
        "max_num_seqs": 256,
    }


def make_plan(gpus: list[tuple[str, int]], dry_run: bool, model_dir: str | None) -> Plan:
    """Choose the placement from the GPUs found and the load that fits the budget."""
    if dry_run or not gpus:
        config = {
            "id": "smollm2-135m", "source": "embedded", "chat_format": "chatml",
            "context_length": 8192, "dtype": "bfloat16", "kv_cache_gib": 1,
            "max_num_seqs": 64, "enforce_eager": True,
        }  # fmt: skip
        load = ["--input-len", "32", "--output-len", "16", "--concurrency", "4",
                "--num-requests", "4", "--rounds", "2", "--warmup", "8"]  # fmt: skip
        return Plan("cpu-dry-run", config, load)
    load = ["--input-len", "512", "--output-len", "128", "--concurrency", "1,16,64",
            "--duration", "10", "--rounds", "3", "--warmup", "32"]  # fmt: skip
    if len(gpus) >= 2:
        return Plan("two-gpus", _llama_config(model_dir, 0.90), load,
                    "env CUDA_VISIBLE_DEVICES=0 ", "env CUDA_VISIBLE_DEVICES=1 ")  # fmt: skip
    if gpus[0][1] >= SHARED_GPU_MIB:
        return Plan("shared-gpu", _llama_config(model_dir, 0.44), load)
    return Plan("sequential", _llama_config(model_dir, 0.90), load, ours_flags=["--sequential"])


def vllm_flags(engine_kwargs: dict[str, Any]) -> list[str]:
    """``AsyncEngineArgs`` keyword arguments as ``vllm serve`` flags (same engine settings)."""
    flags: list[str] = []
    for key, value in engine_kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def _prepare(plan: Plan, out: Path) -> tuple[str, str, str]:
    """Write the model config, build the model folder; return the two commands and folder."""
    from server.models.config import load_model_config
    from server.models.engine import engine_args
    from server.models.store import ensure_model
    from server.settings import Settings

    config_path = out / f"{plan.config['id']}.yaml"
    config_path.write_text(yaml.safe_dump(plan.config, sort_keys=False))
    config = load_model_config(str(config_path))
    model_dir = ensure_model(config, Settings().cache_dir)
    gpu = plan.mode != "cpu-dry-run"
    kwargs = engine_args(config, model_dir, structured_backend="outlines", gpu=gpu)
    flags = vllm_flags(kwargs)
    if config.chat_format == "llama3":
        template = out / "llama3.1_chat.jinja"
        template.write_text(LLAMA3_CHAT_TEMPLATE)
        flags += ["--chat-template", str(template)]
    eager = " --eager" if config.enforce_eager else ""
    ours = (
        f"{plan.ours_prefix}{{python}} -m server --model {shlex.quote(str(config_path))} "
        f"--host 127.0.0.1 --port {{port}}{eager}"
    )
    theirs = (
        f"{plan.theirs_prefix}{{python}} -m benchmarks.vllm_serve "
        f"{shlex.join(flags)} --host 127.0.0.1 --port {{port}}"
    )
    return ours, theirs, model_dir


def main(argv: list[str] | None = None) -> int:
    """Detect the GPU, plan, start both servers through ``compare --start``, report."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dry-run", action="store_true", help="smollm2-135m on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="result folder")
    parser.add_argument("--model-dir", default=None,
                        help="Llama 3.1 8B Instruct folder with real weights "
                        "(default $LLAMA31_8B_DIR; dummy weights without)")  # fmt: skip
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for everything")
    parser.add_argument(
        "--api-processes",
        default=None,
        help="comma-separated API-process counts, one comparison each (default 1,2)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    out = args.out or Path("results") / f"gpu-compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)

    gpus = detect_gpus()
    if gpus:
        described = "; ".join(f"{name} ({memory} MiB)" for name, memory in gpus)
        print(f"GPU: {len(gpus)} x {described}", flush=True)
    else:
        print("GPU: none found by nvidia-smi; running the dry run on the CPU", flush=True)
    model_dir = args.model_dir or os.environ.get("LLAMA31_8B_DIR") or None
    plan = make_plan(gpus, args.dry_run, model_dir)
    print(f"plan: {plan.mode}, model {plan.config['id']}", flush=True)
    (out / "environment.json").write_text(
        json.dumps({"gpus": gpus, "plan": plan.mode, "config": plan.config}, indent=2) + "\n"
    )
    if args.api_processes:
        plan = replace(plan, api_processes=[int(n) for n in args.api_processes.split(",")])
    ours, theirs, folder = _prepare(plan, out)
    from benchmarks.cli import main as bench_main

    status, summaries = 0, []
    for k, n in enumerate(plan.api_processes):
        # Each count gets an equal share of what is left.
        remaining = args.budget - (time.monotonic() - started) - MARGIN_S
        share = remaining / (len(plan.api_processes) - k)
        folder_n = out / f"api-{n}"
        print(f"== {n} API process(es) each, {share:.0f} s ==", flush=True)
        compare = [
            "compare", "--start", *plan.ours_flags, "--model", plan.config["id"],
            "--model-dir", folder, "--tokenizer", folder, "--ours-cmd", ours,
            "--theirs-cmd", theirs, "--api-processes", str(n),
            "--ready-timeout", str(max(60.0, share * 0.4)), "--time-budget", str(share),
            "--scenario", "stream", *plan.load, "--out", str(folder_n), "--no-progress",
        ]  # fmt: skip
        status = bench_main(compare) or status
        result = folder_n / "result.json"
        if result.exists():
            summaries.append((n, json.loads(result.read_text())))
    print(sweep_table(summaries))
    ran = "; ".join(f"{n} ({m} MiB)" for n, m in gpus) or "CPU (no GPU)"
    print(f"ran on: {ran}; mode {plan.mode}; {time.monotonic() - started:.0f} s; results in {out}")
    return status


def sweep_table(results: list[tuple[int, dict[str, Any]]]) -> str:
    """One row per API-process count and load point: each side's output throughput and
    output tokens per API CPU-second."""
    from benchmarks.report import format_table

    rows = []
    for n, result in results:
        ours, theirs = result["a"]["label"], result["b"]["label"]
        for point in result["points"]:
            a, b = point["summaries"][ours], point["summaries"][theirs]
            rows.append([
                n, point["label"], a["output_throughput"], b["output_throughput"],
                a.get("process", {}).get("output_tokens_per_api_cpu_s"),
                b.get("process", {}).get("output_tokens_per_api_cpu_s"),
            ])  # fmt: skip
    headers = ["API processes", "load", "ours tok/s", "vLLM tok/s",
               "ours tok per API CPU s", "vLLM tok per API CPU s"]  # fmt: skip
    return format_table(headers, rows)


if __name__ == "__main__":
    sys.exit(main())
