"""Which real-world JSON Schemas each structured-output backend can enforce, and how fast.

Every schema from JSONSchemaBench (Geng et al., 2025) takes the server's own path: the cheap
checks of :func:`grammars.check_schema` (size, depth, references, meta-schema), then
:class:`grammars.GrammarCompiler`, which runs vLLM's validation and the engine backend's
compile in a worker process killed at the time bound. A schema ends as one of:

``compiled``     the engine could enforce it;
``invalid``      refused before compiling (not a valid schema, or over the server's caps);
``unsupported``  the backend refused it (a feature it lacks);
``timeout``      not compiled within the bound (the server answers 400);
``crashed``      the worker died, out of memory (also a 400).

Compile times are the worker's own (validation, grammar build and first token mask), for the
compiled schemas. The end-to-end part (outputs generated through the server and validated with
``jsonschema``) is separate; :func:`compile_coverage` is the compile part it can reuse::

    python -m benchmarks.schema_coverage --backend outlines xgrammar guidance \\
        --model smollm2-135m --sample 8 --timeout 10 --out results/coverage.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

__all__ = [
    "DATA_DIR",
    "BenchSchema",
    "SampleError",
    "SchemaOutcome",
    "add_sample_options",
    "compile_coverage",
    "draw",
    "format_table",
    "load_schemas",
    "main",
    "model_tokenizer",
    "read_rows",
    "sampled_schemas",
    "summarize",
]

DATA_DIR = Path(__file__).resolve().parent / "data" / "jsonschemabench"
"""The sample kept in the repository (its README says which); ``--data-dir`` takes a full copy."""
MANIFEST = "sample.json"
"""Present in a sample folder only: the full files' sizes, and which draws the sample holds."""
FILES = ("Glaiveai2K", "Github_trivial", "Github_easy", "Github_medium")
BACKENDS = ("outlines", "xgrammar", "guidance")

Status = Literal["compiled", "invalid", "unsupported", "timeout", "crashed"]


@dataclass(frozen=True)
class BenchSchema:
    file: str
    id: str
    schema: Any


@dataclass(frozen=True)
class SchemaOutcome:
    file: str
    id: str
    status: Status
    seconds: float | None = None
    """Compile time in the worker (compiled schemas only)."""
    error: str | None = None


class SampleError(ValueError):
    """The selection asks for schemas that a sample folder does not hold."""


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The ``{"id": ..., "schema": ...}`` rows of a ``.jsonl`` file."""
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]


def draw(rng: random.Random, total: int, sample: int) -> list[int]:
    """The positions of ``sample`` schemas drawn from a file of ``total`` (all if not fewer)."""
    return rng.sample(range(total), sample) if sample < total else list(range(total))


def load_schemas(
    data_dir: Path = DATA_DIR,
    *,
    files: Sequence[str] = FILES,
    sample: int | None = None,
    seed: int = 0,
) -> list[BenchSchema]:
    """The schemas of ``files`` (``<name>.jsonl``), ``sample`` drawn from each (all if None).

    One generator seeded with ``seed`` draws positions in the full files, file after file. A
    sample folder (:mod:`benchmarks.schema_sample`) keeps each schema's position and the full
    files' sizes, so it yields the same schemas as the full copy for the draws it holds, and
    raises :class:`SampleError` for any other. ``None`` takes every schema in the folder."""
    manifest_path = data_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    rng = random.Random(seed)
    schemas = []
    for name in files:
        rows = read_rows(data_dir / f"{name}.jsonl")
        if manifest is None:  # a full copy: positions are line numbers
            by_position, total = dict(enumerate(rows)), len(rows)
        else:
            by_position = {row["index"]: row for row in rows}
            total = manifest["files"][name]["rows"]
        picked = sorted(by_position) if sample is None else draw(rng, total, sample)
        if missing := [i for i in picked if i not in by_position]:
            raise SampleError(_lacking(data_dir, manifest, name, len(missing)))
        schemas += [
            BenchSchema(name, by_position[i]["id"], by_position[i]["schema"]) for i in picked
        ]
    return schemas


def _lacking(data_dir: Path, manifest: Any, name: str, missing: int) -> str:
    drawn = manifest["drawn"]
    low, high = drawn["samples"]
    return (
        f"{data_dir} holds a sample of JSONSchemaBench, the schemas drawn by --files"
        f" {' '.join(drawn['files'])} --sample {low} to {high} --seed {drawn['seed']}, and lacks"
        f" {missing} of the {name} schemas this selection needs: pass --data-dir with a full"
        f" copy (see {data_dir / 'README.md'})"
    )


async def compile_coverage(
    schemas: Sequence[BenchSchema],
    *,
    backend: str,
    tokenizer: str,
    timeout: float,
    vocab_size: int | None = None,
    progress: bool = True,
) -> list[SchemaOutcome]:
    """Compile every schema as a ``response_format`` json_schema, one at a time."""
    from grammars import GrammarCompiler, SchemaError, Shape, check_schema

    outcomes = []
    compiler = GrammarCompiler(
        tokenizer,
        backend=backend,
        timeout=timeout,
        vocab_size=vocab_size,
        cache_size=len(schemas) + 1,
        warmup=False,
        in_worker=True,  # the engine's whole build, timed, whatever the server would do
    )
    try:
        await compiler.start()
        for item in tqdm(schemas, desc=backend, disable=not progress, file=sys.stderr):
            try:
                check_schema(item.schema, param="response_format", what="the schema")
            except SchemaError as exc:
                outcomes.append(SchemaOutcome(item.file, item.id, "invalid", error=str(exc)))
                continue
            result = await compiler.compile(Shape(content="schema", content_schema=item.schema))
            status: Status = (
                "compiled"
                if result.ok
                else "timeout"
                if result.timed_out
                else "crashed"
                if result.crashed
                else "unsupported"
            )
            seconds = round(result.seconds, 4) if result.ok else None
            error = None if result.ok else (result.error or "")[:300]
            outcomes.append(SchemaOutcome(item.file, item.id, status, seconds, error))
    finally:
        compiler.close()
    return outcomes


def summarize(outcomes: Sequence[SchemaOutcome]) -> dict[str, Any]:
    """Counts per status, the compiled share, and compile-time percentiles in seconds."""
    times = np.array([o.seconds for o in outcomes if o.status == "compiled"], dtype=float)
    counts = {s: sum(o.status == s for o in outcomes) for s in Status.__args__}  # type: ignore[attr-defined]
    n = len(outcomes)
    return {
        "n": n,
        **counts,
        "compiled_share": round(counts["compiled"] / n, 4) if n else None,
        "p50_s": round(float(np.percentile(times, 50)), 4) if times.size else None,
        "p99_s": round(float(np.percentile(times, 99)), 4) if times.size else None,
        "max_s": round(float(times.max()), 4) if times.size else None,
    }


_COLUMNS = {
    "n": "n",
    "compiled": "compiled",
    "share": "compiled_share",
    "p50 s": "p50_s",
    "p99 s": "p99_s",
    "timeout": "timeout",
    "crash": "crashed",
    "unsupp": "unsupported",
    "invalid": "invalid",
}


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per backend and file, then the backend's total."""
    rows = [("backend", "file", *_COLUMNS)]
    for backend, result in results.items():
        for file, summary in [*result["by_file"].items(), ("all", result["summary"])]:
            rows.append((backend, file, *(_cell(k, summary[k]) for k in _COLUMNS.values())))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows
    )


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key.endswith("_share"):
        return f"{100 * value:.1f}%"
    if key.endswith("_s"):
        return f"{value:.3f}"
    return str(value)


def add_sample_options(
    parser: argparse.ArgumentParser, *, sample: int, seed_help: str = "sampling seed (default 0)"
) -> None:
    """The options that choose backends and schemas (``--backend``, ``--data-dir``, ``--files``,
    ``--sample``, ``--seed``); :func:`sampled_schemas` reads them back."""
    add = parser.add_argument
    add("--backend", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    add(
        "--data-dir",
        type=Path,
        default=DATA_DIR,
        help="JSONSchemaBench's .jsonl files (default: the sample in benchmarks/data)",
    )
    add("--files", nargs="+", default=list(FILES), choices=FILES)
    add(
        "--sample",
        type=int,
        default=sample,
        help=f"schemas a file, 0 for all in --data-dir (default {sample})",
    )
    add("--seed", type=int, default=0, help=seed_help)


def sampled_schemas(args: argparse.Namespace) -> list[BenchSchema]:
    sample = args.sample or None  # 0: every schema
    return load_schemas(args.data_dir, files=args.files, sample=sample, seed=args.seed)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.schema_coverage",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sample_options(parser, sample=8)
    add = parser.add_argument
    add("--model", default="smollm2-135m", help="the model id (default smollm2-135m)")
    add("--tokenizer", help="tokenizer folder (default: the model's, from the model cache)")
    add(
        "--vocab-size", type=int, default=None, help="the model's vocabulary (default: tokenizer's)"
    )
    add("--timeout", type=float, default=10.0, help="compile bound in seconds (default 10)")
    add("--out", type=Path, default=None, help="write the results as JSON here")
    add("--quiet", action="store_true", help="no progress bars")
    return parser


def model_tokenizer(model: str) -> str:
    """The model's folder in the server's model cache (downloaded and converted if needed)."""
    from server.models.config import load_model_config
    from server.models.store import ensure_model
    from server.settings import Settings

    return ensure_model(load_model_config(model), Settings().cache_dir)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    schemas = sampled_schemas(args)
    tokenizer = args.tokenizer or model_tokenizer(args.model)
    results: dict[str, dict[str, Any]] = {}
    for backend in args.backend:
        outcomes = asyncio.run(
            compile_coverage(
                schemas,
                backend=backend,
                tokenizer=tokenizer,
                timeout=args.timeout,
                vocab_size=args.vocab_size,
                progress=not args.quiet,
            )
        )
        by_file = {f: summarize([o for o in outcomes if o.file == f]) for f in args.files}
        results[backend] = {
            "summary": summarize(outcomes),
            "by_file": by_file,
            "schemas": [asdict(o) for o in outcomes],
        }
    print(format_table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"config": config, "results": results}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
