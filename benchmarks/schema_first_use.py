"""What a schema's first use costs: a never-seen schema against the same schema repeated, and
the first JSON-mode request after a start against the second.

For each backend a fresh server is started; then, one request at a time:

1. two JSON-mode requests (``response_format: json_object``): the first after the start and
   the second;
2. ``--schemas`` never-seen schemas (8 fields and a nested array of objects, each with its own
   field names so no cache can hold it), each sent once;
3. one of them sent ``--schemas`` times more (the verdict and the engine's grammar are warm).

Every request asks for ``--max-tokens`` tokens at temperature 0, so the times differ by the
grammar's cost only. The issue's targets: new-schema median within 1.5x the repeated median,
and the first JSON-mode request within 1.5x the second::

    python -m benchmarks.schema_first_use --model llama3.1-tiny --backend guidance outlines
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.servers import OURS_CMD, ManagedServer, format_command, free_port

__all__ = ["main", "schema_for", "time_backend"]


def schema_for(index: int) -> dict[str, Any]:
    """A schema no earlier request used: 8 fields and a nested array of objects. No numeric
    bounds: Outlines refuses them, and every backend is timed on the same schemas."""
    item = {
        "type": "object",
        "properties": {
            f"sku_{index}": {"type": "string", "maxLength": 12},
            f"qty_{index}": {"type": "integer"},
        },
        "required": [f"sku_{index}", f"qty_{index}"],
        "additionalProperties": False,
    }
    fields: dict[str, Any] = {
        f"name_{index}": {"type": "string", "maxLength": 20},
        f"age_{index}": {"type": "integer"},
        f"email_{index}": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"},
        f"active_{index}": {"type": "boolean"},
        f"score_{index}": {"type": "number"},
        f"tier_{index}": {"enum": ["free", "pro", "team"]},
        f"note_{index}": {"anyOf": [{"type": "string", "maxLength": 30}, {"type": "null"}]},
        f"items_{index}": {"type": "array", "items": item, "maxItems": 3},
    }
    return {
        "type": "object",
        "properties": fields,
        "required": list(fields),
        "additionalProperties": False,
    }


def _post(
    client: httpx.Client, model: str, response_format: dict[str, Any], max_tokens: int
) -> float:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Fill in a customer record as JSON."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "response_format": response_format,
    }
    started = time.perf_counter()
    r = client.post("/chat/completions", json=body)
    seconds = time.perf_counter() - started
    if r.status_code not in (200, 400):  # a 400 here: truncated JSON, still a timed answer
        raise RuntimeError(f"{r.status_code}: {r.text[:300]}")
    if r.status_code == 400 and r.json()["error"]["code"] != "json_validate_failed":
        raise RuntimeError(f"refused: {r.text[:300]}")
    return seconds


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "record", "schema": schema}}


def time_backend(base_url: str, *, model: str, schemas: int, max_tokens: int) -> dict[str, Any]:
    # base_url ends in /v1, as ManagedServer's does.
    with httpx.Client(base_url=base_url, timeout=600) as client:
        json_mode = {"type": "json_object"}
        first_json = _post(client, model, json_mode, max_tokens)
        second_json = _post(client, model, json_mode, max_tokens)
        new = [
            _post(client, model, _schema_format(schema_for(i)), max_tokens) for i in range(schemas)
        ]
        repeated = [
            _post(client, model, _schema_format(schema_for(0)), max_tokens) for _ in range(schemas)
        ]
    new_median, repeated_median = statistics.median(new), statistics.median(repeated)
    return {
        "json_mode_first_s": round(first_json, 3),
        "json_mode_second_s": round(second_json, 3),
        "json_mode_ratio": round(first_json / second_json, 2),
        "new_schema_median_s": round(new_median, 3),
        "repeated_schema_median_s": round(repeated_median, 3),
        "new_over_repeated": round(new_median / repeated_median, 2),
        "new_s": [round(s, 3) for s in new],
        "repeated_s": [round(s, 3) for s in repeated],
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.schema_first_use",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--backend", nargs="+", default=["guidance"], choices=("outlines", "xgrammar", "guidance"))
    add("--model", default="llama3.1-tiny")
    add("--schemas", type=int, default=10, help="never-seen schemas, and repeats (default 10)")
    add("--max-tokens", type=int, default=16)
    add("--grammar-timeout", type=float, default=60.0)
    add("--out", type=Path, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="schema_first_use-"))
    results = {}
    for backend in args.backend:
        port = free_port()
        extra = f"--structured-output-backend {backend} --grammar-timeout {args.grammar_timeout}"
        command = format_command(OURS_CMD, extra + " --eager", model=args.model, port=port)
        with ManagedServer(backend, command, port, log_dir / f"server-{backend}.log") as server:
            server.wait_ready()
            results[backend] = time_backend(
                server.base_url, model=args.model, schemas=args.schemas, max_tokens=args.max_tokens
            )
        row = results[backend]
        print(
            f"{backend:9} json mode first {row['json_mode_first_s']:.3f} s, second "
            f"{row['json_mode_second_s']:.3f} s ({row['json_mode_ratio']}x); new schema median "
            f"{row['new_schema_median_s']:.3f} s, repeated {row['repeated_schema_median_s']:.3f} s "
            f"({row['new_over_repeated']}x)",
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)},
                                        "results": results}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
