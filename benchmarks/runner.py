"""One measured load point against one endpoint: prompts, warmup, load, summary."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.client import ChatClient, normalize_base_url
from benchmarks.load import LoadShape, run_load
from benchmarks.metrics import summarize
from benchmarks.prompts import Prompt, PromptBuilder, PromptKind, load_dataset
from benchmarks.records import RequestRecord
from benchmarks.scenarios import SYSTEM_PROMPTS, TOOLS, Scenario, build_payload

__all__ = [
    "PointResult",
    "PromptSource",
    "Workload",
    "fetch_model",
    "pool_size",
    "run_point",
    "warmup",
]

DEFAULT_POOL = 1000
"""Prompts made for a run bounded only by its duration; beyond them prompts repeat."""


@dataclass(frozen=True)
class Workload:
    """What each request asks for; the same for every endpoint and load point."""

    scenario: Scenario = "stream"
    stream: bool = True
    input_len: int | None = 128
    """User-message tokens of synthetic prompts (``None`` with a dataset)."""
    output_len: int | None = 64
    """``max_tokens`` of each request; a dataset line's own value wins."""
    ignore_eos: bool = True
    prompt_kind: PromptKind = "random"
    dataset: Path | None = None
    tokenizer: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for the result file."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


class PromptSource:
    """Makes fresh prompt pools: exact-length synthetic prompts or a cycled dataset."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        tools = TOOLS if workload.scenario == "tools" else None
        self.builder = (
            PromptBuilder(workload.tokenizer, SYSTEM_PROMPTS[workload.scenario], tools)
            if workload.tokenizer
            else None
        )
        if workload.dataset is not None:
            self.dataset: list[Prompt] | None = load_dataset(workload.dataset, self.builder)
        elif self.builder is None or workload.input_len is None:
            raise ValueError("synthetic prompts need --tokenizer and --input-len (or --dataset)")
        else:
            self.dataset = None

    def pool(self, size: int, salt: str) -> list[Prompt]:
        """``size`` prompts; a different ``salt`` gives different prompts (no cache reuse)."""
        rng = random.Random(f"{self.workload.seed}:{salt}")
        if self.dataset is not None:
            offset = rng.randrange(len(self.dataset))
            return [self.dataset[(offset + i) % len(self.dataset)] for i in range(size)]
        assert self.builder is not None and self.workload.input_len is not None
        return [
            self.builder.exact(self.workload.input_len, self.workload.prompt_kind, rng)
            for _ in range(size)
        ]


@dataclass
class PointResult:
    """Records and summary of one load point on one endpoint."""

    label: str
    shape: LoadShape
    records: list[RequestRecord]
    duration_s: float
    summary: dict[str, Any]


def pool_size(shape: LoadShape) -> int:
    """Prompts needed by ``shape``: its request count, else an estimate for its duration."""
    if shape.num_requests is not None:
        return shape.num_requests
    if shape.rate is not None and shape.duration_s is not None:
        return int(shape.rate * shape.duration_s * 1.5) + 16
    return DEFAULT_POOL


async def fetch_model(base_url: str, api_key: str | None = None) -> str:
    """The first model id of ``GET /v1/models``: the default when ``--model`` is not given."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=30.0, headers=headers) as http:
        response = await http.get(normalize_base_url(base_url) + "/models")
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])


async def run_point(
    client: ChatClient,
    model: str,
    workload: Workload,
    prompts: list[Prompt],
    shape: LoadShape,
    slos_ms: Mapping[str, float] | None = None,
    progress: bool = True,
    desc: str = "",
) -> PointResult:
    """Send ``shape``'s requests with ``prompts`` (cycled) and summarize them."""

    async def send(record: RequestRecord) -> None:
        prompt = prompts[record.index % len(prompts)]
        record.expected_prompt_tokens = prompt.expected_prompt_tokens
        body = build_payload(
            workload.scenario,
            model,
            prompt.messages,
            prompt.max_tokens or workload.output_len,
            stream=workload.stream,
            ignore_eos=workload.ignore_eos,
            extra=workload.extra_body,
        )
        await client.send(record, body, workload.scenario)

    records, duration = await run_load(shape, send, progress=progress, desc=desc)
    return PointResult(shape.label, shape, records, duration, summarize(records, duration, slos_ms))


async def warmup(
    client: ChatClient, model: str, workload: Workload, prompts: list[Prompt], concurrency: int
) -> None:
    """Unmeasured requests (one per prompt) that let the server compile and fill caches."""
    if prompts:
        shape = LoadShape(concurrency=max(1, concurrency), num_requests=len(prompts))
        await run_point(client, model, workload, prompts, shape, progress=False)
