"""End to end: real-world schemas sent through the server, outputs checked with ``jsonschema``.

For each backend, the same sample of JSONSchemaBench schemas (see
:mod:`benchmarks.schema_coverage`) is first compiled offline (the share compiled and the compile
time), then sent to a server running that backend, one request at a time: a chat request with
``response_format: json_schema`` and a prompt that quotes the schema, and the same request
without ``response_format``. Every schema is sent, compiled offline or not, so the server's
answer to the ones it cannot enforce (a 400 ``invalid_schema``, never a hang) is checked too.
A constrained request ends as one of:

``valid``      200, and the content validates against the schema (``jsonschema``);
``invalid``    200 with content that does not validate: a server bug;
``truncated``  400 ``json_validate_failed`` whose ``failed_generation`` is not JSON (the
               output hit ``max_tokens``), counted apart as the issue asks;
``caught``     400 ``json_validate_failed`` whose output parses but breaks the schema: the
               grammar let it through and the server's own check stopped it;
``compile``    400 ``invalid_schema`` on ``response_format``: not enforceable;
``error``      anything else (other status, request timeout, server gone).

Tokens per second are ``usage.completion_tokens`` over the request's wall time, summed over the
schemas whose constrained and free requests both answered 200 (the constrained time includes
the schema's compile, the real cost of a first use). Start one server per backend::

    python -m benchmarks.schema_e2e --backend outlines xgrammar guidance --sample 6

or measure a running one (``--backend`` then names its backend, for the compile part)::

    python -m benchmarks.schema_e2e --base-url http://127.0.0.1:8000 --backend outlines
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for
from tqdm import tqdm

from benchmarks.schema_coverage import (
    BenchSchema,
    add_sample_options,
    compile_coverage,
    model_tokenizer,
    sampled_schemas,
    summarize,
)
from benchmarks.servers import OURS_CMD, ManagedServer, ServerError, format_command, free_port

__all__ = ["Attempt", "format_e2e_table", "main", "run_schemas", "summarize_e2e"]

Status = Literal["valid", "invalid", "truncated", "caught", "compile", "error"]
SYSTEM = "You answer only with one JSON object, no other text."
PROMPT_SCHEMA_CHARS = 6000
"""The schema text quoted in the prompt is cut here, to stay well within the context."""


@dataclass
class Attempt:
    """One schema's constrained request and its free (unconstrained) twin."""

    file: str
    id: str
    status: Status
    tokens: int | None = None
    seconds: float | None = None
    decode_seconds: float | None = None
    """The server's ``time_info.completion_time``: first to last token, no prefill or compile."""
    free_tokens: int | None = None
    free_seconds: float | None = None
    free_decode_seconds: float | None = None
    format_ok: bool | None = None
    """For valid outputs: whether they also pass jsonschema's ``format`` checks."""
    detail: str | None = None
    output: str | None = None
    """The constrained content, or the ``failed_generation`` of a 400."""


def messages(schema: Any) -> list[dict[str, str]]:
    text = json.dumps(schema, separators=(",", ":"))
    if len(text) > PROMPT_SCHEMA_CHARS:
        text = text[:PROMPT_SCHEMA_CHARS] + " ...(cut)"
    user = f"Return a JSON object that matches this JSON Schema.\n\nSchema:\n{text}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _post(client: httpx.Client, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    start = time.perf_counter()
    response = client.post("/chat/completions", json=body)
    seconds = time.perf_counter() - start
    try:
        data = response.json()
    except ValueError:
        data = {"error": {"message": response.text[:300]}}
    return response.status_code, data if isinstance(data, dict) else {}, seconds


def _check(schema: Any, text: str) -> tuple[bool, bool, str | None]:
    """(parses, valid, why not) of ``text`` under ``schema``, in the schema's own draft."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return False, False, f"not JSON: {exc}"
    try:
        error = next(validator_for(schema, default=Draft202012Validator)(schema).iter_errors(value))
    except StopIteration:
        return True, True, None
    except Exception as exc:  # an unresolvable $ref and the like: we cannot tell
        return True, False, f"cannot validate: {type(exc).__name__}: {exc}"[:300]
    return True, False, error.message[:300]


def _format_ok(schema: Any, text: str) -> bool:
    # The schema's own draft's checkers: a bare FormatChecker() holds every draft's, and
    # draft 3's "time" (HH:MM:SS, no zone) would refuse every RFC 3339 time.
    cls = validator_for(schema, default=Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER).is_valid(json.loads(text))


def run_one(client: httpx.Client, item: BenchSchema, body: dict[str, Any]) -> Attempt:
    """The constrained request for ``item``, classified; then its free twin, timed."""
    fmt = {"type": "json_schema", "json_schema": {"name": "out", "schema": item.schema}}
    attempt = Attempt(item.file, item.id, "error")
    try:
        status, data, seconds = _post(client, {**body, "response_format": fmt})
    except httpx.HTTPError as exc:
        attempt.detail = f"{type(exc).__name__}: {exc}"[:300]
        return attempt
    error = data.get("error") if isinstance(data.get("error"), dict) else {}
    if status == 200:
        text = data["choices"][0]["message"]["content"] or ""
        _, valid, why = _check(item.schema, text)
        attempt.status, attempt.output, attempt.detail = (
            ("valid" if valid else "invalid"),
            text,
            why,
        )
        attempt.tokens, attempt.seconds = data["usage"]["completion_tokens"], seconds
        attempt.decode_seconds = (data.get("time_info") or {}).get("completion_time")
        attempt.format_ok = _format_ok(item.schema, text) if valid else None
    elif status == 400 and error.get("code") == "json_validate_failed":
        attempt.output = error.get("failed_generation") or ""
        parses, _, why = _check(item.schema, attempt.output)
        attempt.status, attempt.detail = ("caught" if parses else "truncated"), why
    elif status == 400 and error.get("code") == "invalid_schema":
        attempt.status, attempt.detail = "compile", str(error.get("message"))[:300]
    else:
        attempt.detail = f"HTTP {status}: {str(error.get('message') or data)[:300]}"
    if attempt.status != "valid":
        return attempt
    try:
        # As many tokens as the constrained answer: a free answer runs on to max_tokens, and
        # longer answers spread the prompt's cost thinner, which would flatter the free side.
        status, data, seconds = _post(client, {**body, "max_tokens": attempt.tokens})
    except httpx.HTTPError as exc:
        attempt.detail = f"free request: {type(exc).__name__}: {exc}"[:300]
        return attempt
    if status == 200:
        attempt.free_tokens, attempt.free_seconds = data["usage"]["completion_tokens"], seconds
        attempt.free_decode_seconds = (data.get("time_info") or {}).get("completion_time")
    return attempt


def run_schemas(
    base_url: str,
    schemas: Sequence[BenchSchema],
    *,
    model: str,
    max_tokens: int = 512,
    seed: int = 0,
    request_timeout: float = 180.0,
    progress: bool = True,
    label: str = "e2e",
) -> list[Attempt]:
    """Every schema's requests, in order and one at a time, each bounded by the timeout."""
    url = base_url.rstrip("/")
    url = url if url.endswith("/v1") else f"{url}/v1"
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "seed": seed}
    attempts = []
    with httpx.Client(base_url=url, timeout=request_timeout) as client:
        for item in tqdm(schemas, desc=label, disable=not progress, file=sys.stderr):
            attempts.append(run_one(client, item, {**body, "messages": messages(item.schema)}))
    return attempts


def summarize_e2e(attempts: Sequence[Attempt]) -> dict[str, Any]:
    """Counts per status, the valid share of 200s, and tokens per second (paired 200s only).

    ``tok_s`` is output tokens over wall time (prompt, compile and decode); ``decode_tok_s``
    the gaps between tokens over the server's decode time, the per-token cost of the mask."""
    counts = {s: sum(a.status == s for a in attempts) for s in Status.__args__}  # type: ignore[attr-defined]
    answered = counts["valid"] + counts["invalid"]
    paired = [a for a in attempts if a.status == "valid" and a.free_seconds]
    tps = _rate(paired, "tokens", "seconds")
    free_tps = _rate(paired, "free_tokens", "free_seconds")
    decode = _rate(paired, "tokens", "decode_seconds", True)
    free_decode = _rate(paired, "free_tokens", "free_decode_seconds", True)
    return {
        "sent": len(attempts),
        "ok": answered,
        **counts,
        "valid_share": round(counts["valid"] / answered, 4) if answered else None,
        "format_violations": sum(a.format_ok is False for a in attempts),
        "paired": len(paired),
        "tokens": sum(a.tokens or 0 for a in paired),
        "free_tokens": sum(a.free_tokens or 0 for a in paired),
        "tok_s": tps,
        "free_tok_s": free_tps,
        "ratio": round(tps / free_tps, 3) if tps and free_tps else None,
        "decode_tok_s": decode,
        "free_decode_tok_s": free_decode,
        "decode_ratio": round(decode / free_decode, 3) if decode and free_decode else None,
    }


def _rate(
    attempts: Sequence[Attempt], tokens: str, seconds: str, gaps: bool = False
) -> float | None:
    """Summed tokens (or the gaps between them) over summed seconds."""
    skip = 1 if gaps else 0
    rows = [(getattr(a, tokens) or 0, getattr(a, seconds)) for a in attempts]
    rows = [(n - skip, t) for n, t in rows if t and n > skip]
    total = sum(t for _, t in rows)
    return round(sum(n for n, _ in rows) / total, 2) if total else None


_COLUMNS = {
    "compiled": ("compile", "compiled_share"),
    "p50 s": ("compile", "p50_s"),
    "p99 s": ("compile", "p99_s"),
    "sent": ("e2e", "sent"),
    "200": ("e2e", "ok"),
    "valid": ("e2e", "valid"),
    "invalid": ("e2e", "invalid"),
    "truncated": ("e2e", "truncated"),
    "caught": ("e2e", "caught"),
    "compile 400": ("e2e", "compile"),
    "errors": ("e2e", "error"),
    "fmt viol": ("e2e", "format_violations"),
    "tok/s constr": ("e2e", "tok_s"),
    "tok/s free": ("e2e", "free_tok_s"),
    "ratio": ("e2e", "ratio"),
    "decode constr": ("e2e", "decode_tok_s"),
    "decode free": ("e2e", "free_decode_tok_s"),
    "decode ratio": ("e2e", "decode_ratio"),
}


def format_e2e_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per backend: compile coverage, the constrained outcomes, the cost."""
    rows = [("backend", *_COLUMNS)]
    for backend, result in results.items():
        cells = []
        for part, key in _COLUMNS.values():
            value = (result.get(part) or {}).get(key)
            cells.append(
                "-"
                if value is None
                else f"{100 * value:.1f}%"
                if key == "compiled_share"
                else f"{value:.3f}"
                if key in ("p50_s", "p99_s")
                else str(value)
            )
        rows.append((backend, *cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _backend(args: argparse.Namespace, backend: str, schemas: list[BenchSchema]) -> dict:
    result: dict[str, Any] = {}
    if not args.no_compile:
        outcomes = asyncio.run(
            compile_coverage(
                schemas,
                backend=backend,
                tokenizer=args.tokenizer or model_tokenizer(args.model),
                timeout=args.grammar_timeout,
                progress=not args.quiet,
            )
        )
        result["compile"] = summarize(outcomes)
        result["compile_status"] = {f"{o.file}/{o.id}": o.status for o in outcomes}
    run = dict(
        model=args.model,
        max_tokens=args.max_tokens,
        seed=args.seed,
        request_timeout=args.request_timeout,
        progress=not args.quiet,
        label=backend,
    )
    if args.base_url:
        attempts = run_schemas(args.base_url, schemas, **run)
    else:
        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="schema_e2e-"))
        port = free_port()
        extra = f"--structured-output-backend {backend} --grammar-timeout {args.grammar_timeout}"
        extra += " --eager" if args.eager else ""
        command = format_command(OURS_CMD, extra, model=args.model, port=port)
        server = ManagedServer(backend, command, port, log_dir / f"server-{backend}.log")
        try:
            with server:
                server.wait_ready()
                attempts = run_schemas(server.base_url, schemas, **run)
                if server.process and server.process.poll() is not None:
                    result["server_exit"] = server.process.returncode
        except ServerError as exc:
            result["server_error"] = str(exc)[-3000:]
            return result
        result["server_log"] = str(server.log_path)
    result["e2e"] = summarize_e2e(attempts)
    if "compile_status" in result:
        # Offline and online should agree on what compiles (the server's load may add timeouts).
        offline = result["compile_status"]
        result["e2e"]["compile_disagreements"] = [
            f"{a.file}/{a.id}"
            for a in attempts
            if a.status != "error"
            and (a.status == "compile") != (offline[f"{a.file}/{a.id}"] != "compiled")
        ]
    result["attempts"] = [asdict(a) for a in attempts]
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.schema_e2e",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sample_options(parser, sample=6, seed_help="sample and request seed (default 0)")
    add = parser.add_argument
    add("--base-url", help="a running server (one --backend) instead of starting one per backend")
    add("--model", default="smollm2-135m", help="the model id (default smollm2-135m)")
    add("--tokenizer", help="tokenizer folder for the compile part (default: the model's)")
    add("--max-tokens", type=int, default=512)
    add("--grammar-timeout", type=float, default=10.0, help="compile bound, s (default 10)")
    add("--request-timeout", type=float, default=180.0, help="per request, s (default 180)")
    add("--eager", action=argparse.BooleanOptionalAction, default=True, help="servers' --eager")
    add("--no-compile", action="store_true", help="skip the offline compile part")
    add("--log-dir", type=Path, help="server logs (default: a new temporary folder)")
    add("--out", type=Path, default=Path("results/schema_e2e.json"), help="JSON results")
    add("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.base_url and len(args.backend) != 1:
        _parser().error("--base-url takes exactly one --backend (the server's)")
    schemas = sampled_schemas(args)
    results = {backend: _backend(args, backend, schemas) for backend in args.backend}
    print(format_e2e_table(results))
    for backend, result in results.items():
        if "server_error" in result:
            print(f"\n{backend}: server failed\n{result['server_error']}")
        for a in result.get("attempts", []):
            if a["status"] in ("invalid", "error"):
                print(f"\n{backend} {a['status']} {a['file']}/{a['id']}: {a['detail']}")
                if a["output"] is not None:
                    print(f"  output: {a['output'][:500]!r}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"config": config, "results": results}, indent=1))
    print(f"wrote {args.out}")
    return 1 if any(r.get("e2e", {}).get("invalid") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
