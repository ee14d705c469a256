"""The ``run`` and ``compare`` commands: validate options, measure, print, save, plot."""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import plots
from benchmarks.client import ChatClient
from benchmarks.compare import Comparison, Target, run_compare, run_sequential
from benchmarks.load import LoadShape
from benchmarks.ratios import PLOTTED, RatioRow, format_ratio_table
from benchmarks.report import format_run, format_sweep, write_json
from benchmarks.runner import PromptSource, Workload, fetch_model, pool_size, run_point, warmup
from benchmarks.servers import ManagedServer, ServerError, format_command, free_port

__all__ = ["UsageError", "build_shapes", "build_workload", "run_command"]

DEFAULT_MODEL = "smollm2-135m"


class UsageError(ValueError):
    """Options that contradict each other; reported without a traceback."""


def build_workload(args: argparse.Namespace, tokenizer: str | None = None) -> Workload:
    """The request contents from the options, with each scenario's defaults filled in."""
    stream = args.stream if args.stream is not None else args.scenario == "stream"
    if args.scenario == "stream" and not stream:
        raise UsageError("--scenario stream cannot be combined with --no-stream")
    plain = args.scenario in ("chat", "stream")
    ignore_eos = args.ignore_eos if args.ignore_eos is not None else plain
    if not stream and {"ttft", "tpot"} & dict(args.slo).keys():
        raise UsageError("TTFT and TPOT SLOs need streamed responses (add --stream)")
    return Workload(
        scenario=("stream" if stream else "chat") if plain else args.scenario,
        stream=stream,
        input_len=None if args.dataset else args.input_len,
        output_len=args.output_len,
        ignore_eos=ignore_eos,
        prompt_kind=args.prompt_kind,
        dataset=args.dataset,
        tokenizer=tokenizer or args.tokenizer,
        extra_body=args.extra_body,
        seed=args.seed,
    )


def build_shapes(args: argparse.Namespace) -> list[LoadShape]:
    """One load shape per listed concurrency or rate."""
    if args.rate and args.concurrency:
        raise UsageError("give --concurrency or --rate (with --max-concurrency), not both")
    count = args.num_requests if args.num_requests or args.duration else 100
    if args.rate:
        return [
            LoadShape(args.max_concurrency, r, count, args.duration, args.seed) for r in args.rate
        ]
    return [LoadShape(c, None, count, args.duration, args.seed) for c in args.concurrency or [1]]


def _out_dir(args: argparse.Namespace) -> Path:
    return args.out or Path("results") / f"{args.command}-{time.strftime('%Y%m%d-%H%M%S')}"


def _x(shape: LoadShape) -> float:
    return shape.rate if shape.rate is not None else float(shape.concurrency or 0)


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9.]+", "-", text).strip("-")


async def _run(args: argparse.Namespace, workload: Workload, shapes: list[LoadShape]) -> int:
    out, slos = _out_dir(args), dict(args.slo)
    source = PromptSource(workload)
    async with ChatClient(args.base_url, args.api_key, args.timeout) as client:
        model = args.model or await fetch_model(args.base_url, args.api_key)
        label = args.label or model
        if args.warmup:
            top = max(s.concurrency or 1 for s in shapes)
            await warmup(client, model, workload, source.pool(args.warmup, "warmup"), top)
        results = []
        for index, shape in enumerate(shapes):
            prompts = source.pool(pool_size(shape), f"point{index}")
            result = await run_point(
                client, model, workload, prompts, shape, slos, not args.no_progress, shape.label
            )
            print(format_run(f"{label}: {shape.label}", result.summary), flush=True)
            results.append(result)
    if len(results) > 1:
        print("\n" + format_sweep([(r.label, r.summary) for r in results]))
    document: dict[str, Any] = {
        "command": "run",
        "argv": sys.argv,
        "label": label,
        "base_url": args.base_url,
        "model": model,
        "workload": workload.describe(),
        "points": [
            {
                "label": r.label,
                "shape": r.shape.__dict__,
                "summary": r.summary,
                **({"requests": [x.to_dict() for x in r.records]} if args.save_requests else {}),
            }
            for r in results
        ],
    }
    print(f"\nresult: {write_json(out / 'result.json', document)}")
    if not args.no_plots:
        series = {r.label: r.records for r in results}
        paths = [plots.plot_latencies(series, out / "latency.png", f"{label}: latency")]
        if len(results) > 1:
            xlabel = "request rate (req/s)" if shapes[0].rate else "concurrency"
            sweep = {label: [(_x(r.shape), r.summary) for r in results]}
            paths.append(plots.plot_sweep(sweep, out / "sweep.png", xlabel, f"{label}: sweep"))
        print("plots: " + ", ".join(str(p) for p in paths))
    return 0


def _start_servers(args: argparse.Namespace, out: Path) -> list[ManagedServer]:
    model = args.model or DEFAULT_MODEL
    values = {"model": model, "model_dir": args.model_dir or ""}
    if not args.model_dir and "{model_dir}" in args.ours_cmd + args.theirs_cmd:
        raise UsageError("--start with these commands needs --model-dir")
    if args.api_processes < 1:
        raise UsageError("--api-processes must be at least 1")
    ours_extra, theirs_extra = args.ours_args, args.theirs_args
    if args.api_processes > 1:
        ours_extra += f" --api-processes {args.api_processes}"
        theirs_extra += f" --api-server-count {args.api_processes}"
    servers = []
    for name, template, extra in (
        (args.a_label, args.ours_cmd, ours_extra),
        (args.b_label, args.theirs_cmd, theirs_extra),
    ):
        port = free_port()
        command = format_command(template, extra, port=port, **values)
        servers.append(
            ManagedServer(name, command, port, out / f"{_slug(name)}.log", args.ready_timeout)
        )
    return servers


async def _up(server: ManagedServer, target: Target) -> None:
    print(f"starting {server.name}: {shlex.join(server.command)}", flush=True)
    server.start()
    await asyncio.to_thread(server.wait_ready)
    target.pid = server.pid
    print(f"{server.name} ready at {server.base_url} (pid {server.pid})", flush=True)


async def _measure_both(
    args: argparse.Namespace, shapes: list[LoadShape], out: Path
) -> tuple[Target, Target, dict[str, Any]]:
    """Start (or reach) both endpoints, run the rounds, stop what was started."""
    deadline = time.monotonic() + args.time_budget if args.time_budget else None
    if args.a_label == args.b_label:
        raise UsageError("--a-label and --b-label must differ")
    if args.start:
        servers = _start_servers(args, out)
        model = args.model or DEFAULT_MODEL
        a, b = (Target(s.name, s.base_url, model) for s in servers)
    elif args.a_url and args.b_url:
        if args.sequential:
            raise UsageError("--sequential starts and stops the servers: it needs --start")
        servers = []
        a = Target(args.a_label, args.a_url, args.model, args.a_pid)
        b = Target(args.b_label, args.b_url, args.model, args.b_pid)
    else:
        raise UsageError("compare needs --a-url and --b-url, or --start")
    workload = build_workload(args, args.tokenizer or args.model_dir)
    comparison = Comparison(
        a, b, workload, shapes, dict(args.slo), args.api_key, args.timeout, not args.no_progress
    )
    by_label = {s.name: s for s in servers}
    try:
        if args.sequential:

            async def up(target: Target) -> None:
                await _up(by_label[target.label], target)

            async def down(target: Target) -> None:
                await asyncio.to_thread(by_label[target.label].stop)

            return (
                a,
                b,
                await run_sequential(comparison, args.rounds, up, down, args.warmup, deadline),
            )
        # One after the other: engines sharing a GPU must not size their memory at once.
        for server, target in zip(servers, (a, b), strict=True):
            await _up(server, target)
        return a, b, await run_compare(comparison, args.rounds, args.warmup, deadline)
    finally:
        for server in servers:
            server.stop()


async def _compare(args: argparse.Namespace, shapes: list[LoadShape]) -> int:
    out = _out_dir(args)
    a, b, result = await _measure_both(args, shapes, out)
    for point in result["points"]:
        print(
            f"\n== {point['label']}: {a.label} (A) vs {b.label} (B), {result['rounds']} rounds =="
        )
        print(format_ratio_table([RatioRow(**r) for r in point["ratios"]], a.label, b.label))
    for target in (a, b):
        rows = [(p["label"], p["summaries"][target.label]) for p in result["points"]]
        print(f"\n{target.label} ({target.base_url}):\n{format_sweep(rows)}")
    result.update(command="compare", argv=sys.argv, sequential=bool(args.sequential))
    if args.save_requests:
        for index, point in enumerate(result["points"]):
            point["requests"] = {
                t.label: [r.to_dict() for r in t.records.get(index, [])] for t in (a, b)
            }
    print(f"\nresult: {write_json(out / 'result.json', result)}")
    if not args.no_plots:
        paths = _compare_plots(result, a, b, shapes, out)
        print("plots: " + ", ".join(str(p) for p in paths))
    return 0


def _compare_plots(
    result: dict[str, Any], a: Target, b: Target, shapes: list[LoadShape], out: Path
) -> list[Path]:
    paths = []
    for index, point in enumerate(result["points"]):
        series = {t.label: t.records.get(index, []) for t in (a, b)}
        name = f"latency-{_slug(point['label'])}.png"
        paths.append(plots.plot_latencies(series, out / name, f"{point['label']}: latency"))
    ratios = {
        p["label"]: {r["label"]: r["ratio"] for r in p["ratios"] if r["ratio"] is not None}
        for p in result["points"]
    }
    title = f"{a.label} / {b.label}"
    paths.append(plots.plot_ratios(ratios, out / "ratios.png", title, PLOTTED))
    if len(shapes) > 1:
        xlabel = "request rate (req/s)" if shapes[0].rate else "concurrency"
        sweep = {
            t.label: [
                (_x(s), p["summaries"][t.label])
                for s, p in zip(shapes, result["points"], strict=True)
            ]
            for t in (a, b)
        }
        paths.append(plots.plot_sweep(sweep, out / "sweep.png", xlabel, title))
    return paths


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; usage and server errors print a message and return 2 or 1."""
    try:
        shapes = build_shapes(args)
        if args.command == "run":
            return asyncio.run(_run(args, build_workload(args), shapes))
        return asyncio.run(_compare(args, shapes))
    except (UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"error: cannot reach the endpoint: {exc!r}", file=sys.stderr)
        return 1
