"""Command line: ``python -m benchmarks run ...`` and ``python -m benchmarks compare ...``.

:func:`main` takes an argv list, so tests call it in process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.metrics import parse_slo
from benchmarks.scenarios import SCENARIOS
from benchmarks.servers import OURS_CMD, THEIRS_CMD

__all__ = ["build_parser", "main"]

EPILOG = """examples:
  python -m benchmarks run --base-url http://127.0.0.1:8000/v1 --tokenizer $MODEL_DIR \\
      --input-len 128 --output-len 64 --concurrency 1,8,32 --num-requests 100 \\
      --slo ttft=2000 --slo tpot=200 --out results/sweep
  python -m benchmarks run --tokenizer DIR --rate 0.5,1,2 --duration 60 --scenario json
  python -m benchmarks compare --start --model smollm2-135m --model-dir $MODEL_DIR \\
      --concurrency 4,16 --num-requests 32 --rounds 3
MODEL_DIR is the model's folder, e.g. ~/.cache/llama-serve/models/smollm2-135m.
"""


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _slo(text: str) -> tuple[str, float]:
    try:
        return parse_slo(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _add_workload(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--model", help="model id to request (default: first of GET /v1/models)")
    g.add_argument(
        "--api-key",
        default=os.environ.get("BENCH_API_KEY") or os.environ.get("OPENAI_API_KEY"),
        help="bearer token (default: $BENCH_API_KEY, then $OPENAI_API_KEY)",
    )
    g.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="stream",
        help="chat (plain), stream (chat streamed), json (response_format "
        "json_object), tools (tools + tool_choice required); default stream",
    )
    g.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stream responses (default: only for the stream scenario); TTFT, "
        "TPOT and ITL need streaming",
    )
    g.add_argument("--tokenizer", help="tokenizer folder of the served model (exact prompts)")
    g.add_argument(
        "--input-len",
        type=int,
        default=128,
        help="tokens the user message adds to the chat prompt (default 128)",
    )
    g.add_argument("--output-len", type=int, default=64, help="max_tokens (default 64)")
    g.add_argument(
        "--prompt-kind",
        choices=("random", "text"),
        default="random",
        help="random token ids (like vLLM's random dataset) or English words",
    )
    g.add_argument("--dataset", type=Path, help='JSONL of {"messages": [...]} instead')
    g.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send ignore_eos so every answer has --output-len tokens (default: "
        "on for chat and stream, off for json and tools)",
    )
    g.add_argument(
        "--extra-body",
        type=_json_object,
        default={},
        help="JSON object merged into every request body",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")


def _add_load(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load (one run per listed value: a sweep)")
    g.add_argument(
        "--concurrency",
        type=_ints,
        default=None,
        help="fixed concurrency, comma-separated for a sweep (default 1)",
    )
    g.add_argument(
        "--rate",
        type=_floats,
        default=None,
        help="requests/s with Poisson arrivals, comma-separated for a sweep",
    )
    g.add_argument(
        "--max-concurrency", type=int, default=None, help="with --rate: cap on requests in flight"
    )
    g.add_argument(
        "--num-requests",
        type=int,
        default=None,
        help="requests per run (default 100 unless --duration)",
    )
    g.add_argument(
        "--duration", type=float, default=None, help="seconds per run; no request starts after it"
    )
    g.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="unmeasured requests sent first to each endpoint (default 0)",
    )
    g.add_argument(
        "--slo",
        type=_slo,
        action="append",
        default=[],
        metavar="METRIC=MS",
        help="goodput bound, repeatable: ttft=2000, tpot=200, e2el=10000",
    )


def _add_output(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result folder (default results/<command>-<timestamp>)",
    )
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g.add_argument(
        "--save-requests",
        action="store_true",
        help="include every request's record in the JSON result",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The ``run`` and ``compare`` sub-commands with their shared options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Load benchmarks for OpenAI-compatible Chat Completions endpoints.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="measure one endpoint",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--base-url",
        default="http://127.0.0.1:8000/v1",
        help="endpoint base, with or without /v1 (default %(default)s)",
    )
    run.add_argument("--label", default=None, help="name of the endpoint in tables and plots")
    for add in (_add_workload, _add_load, _add_output):
        add(run)

    cmp = sub.add_parser(
        "compare",
        help="same load on two endpoints, interleaved; A / B",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = cmp.add_argument_group("endpoints (A is ours, B theirs)")
    g.add_argument("--a-url", help="base URL of A (unless --start)")
    g.add_argument("--b-url", help="base URL of B (unless --start)")
    g.add_argument("--a-label", default="ours")
    g.add_argument("--b-label", default="vllm")
    g.add_argument("--a-pid", type=int, help="pid of A's server (its API processes: /proc figures)")
    g.add_argument("--b-pid", type=int, help="pid of B's server (its API processes: /proc figures)")
    g.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    g.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds from the start of the command (server start-up included); a round "
        "starts only if one as long as the last still fits (the first always runs)",
    )
    s = cmp.add_argument_group("starting the servers (--start)")
    s.add_argument("--start", action="store_true", help="start both servers, stop them after")
    s.add_argument(
        "--sequential",
        action="store_true",
        help="with --start: all rounds on A, stop it, then all on B (servers that cannot "
        "run at once, e.g. one GPU too small for two copies of the model)",
    )
    s.add_argument("--model-dir", help="{model_dir} of the commands (and default --tokenizer)")
    s.add_argument("--ours-cmd", default=OURS_CMD, help="A's command (default: %(default)s)")
    s.add_argument("--theirs-cmd", default=THEIRS_CMD, help="B's command (default: %(default)s)")
    s.add_argument(
        "--ours-args",
        default="",
        help='extra arguments appended to A\'s command (write --ours-args="--flag v")',
    )
    s.add_argument(
        "--theirs-args",
        default="",
        help='extra arguments appended to B\'s command (write --theirs-args="--flag v")',
    )
    s.add_argument(
        "--api-processes",
        type=int,
        default=1,
        help="API processes of each server: ours --api-processes N, vLLM's --api-server-count "
        "N (default 1: neither flag is passed)",
    )
    s.add_argument("--ready-timeout", type=float, default=600.0, help="seconds per server")
    for add in (_add_workload, _add_load, _add_output):
        add(cmp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return the exit status."""
    from benchmarks.commands import run_command  # heavy imports only after --help

    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        return run_command(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
