"""The GPU comparison script's dry run: the whole flow on smollm2-135m on the CPU.

Runs ``python -m benchmarks.gpu_compare --dry-run`` as a user would: for one API process each,
then two (the API-process sweep), it starts our server and vLLM's OpenAI server one after the
other, runs compare mode with tiny counts, writes the result file and plots, and must finish
well within its ten-minute budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_script_dry_run(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_compare", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=660,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert elapsed < 600
    assert "plan: cpu-dry-run" in proc.stdout and "ran on: " in proc.stdout

    assert "ours tok per API CPU s" in proc.stdout  # the sweep's table

    for n in (1, 2):
        folder = tmp_path / f"api-{n}"
        result = json.loads((folder / "result.json").read_text())
        assert result["rounds"] == 2 and [p["label"] for p in result["points"]] == ["concurrency 4"]
        for point in result["points"]:
            for label in ("ours", "vllm"):
                summary = point["summaries"][label]
                assert summary["completed"] == summary["requests"] == 8  # 4 requests x 2 rounds
                assert summary["total_output_tokens"] == 8 * 16  # ignore_eos + max_tokens
                assert summary["ttft_ms"]["p50"] > 0 and summary["tpot_ms"]["p50"] > 0
                process = summary["process"]
                # The process we started, and with two its two titled API processes.
                assert process["api_processes"] == (1 if n == 1 else 3)
                assert process["api_cpu_s_per_1k_tokens"] > 0 and process["api_peak_rss_mib"] > 50
                assert process["output_tokens_per_api_cpu_s"] > 0
            rows = {row["label"]: row for row in point["ratios"]}
            # Same engine, same model, same chat layout: both servers count the same prompt.
            assert rows["prompt tokens (mean)"]["ratio"] == 1.0
            assert rows["output throughput (tok/s)"]["ratio"] > 0
        for name in ("ratios.png", "latency-concurrency-4.png", "ours.log", "vllm.log"):
            assert (folder / name).stat().st_size > 0, name
