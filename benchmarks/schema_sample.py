"""Build JSONSchemaBench's ``.jsonl`` files, and draw the small sample kept in the repository.

``full`` writes one ``<name>.jsonl`` a file of JSONSchemaBench from a checkout of
guidance-ai/jsonschemabench: one schema a line, ``{"id": <file name without .json>, "schema":
{...}}``, in file-name order, compact and ASCII-only. ``draw`` keeps from such a folder every
schema that :func:`benchmarks.schema_coverage.load_schemas` picks for ``--sample 1`` to
``--max-sample`` with ``--seed``, over all of ``FILES``, each with its position in the full
file, and writes the full files' sizes and digests to ``sample.json``: the sample then yields
exactly the schemas the full copy would for those draws, and refuses any other::

    git clone https://github.com/guidance-ai/jsonschemabench /tmp/jsb
    git -C /tmp/jsb checkout ba103c73756198dd9b149ddc7db7867da7a077f6
    python -m benchmarks.schema_sample full /tmp/jsb /tmp/jsonschemabench
    python -m benchmarks.schema_sample draw --data-dir /tmp/jsonschemabench
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.schema_coverage import DATA_DIR, FILES, MANIFEST, draw, read_rows

__all__ = ["UPSTREAM", "UPSTREAM_COMMIT", "draw_sample", "main", "write_full"]

UPSTREAM = "https://github.com/guidance-ai/jsonschemabench"
UPSTREAM_COMMIT = "ba103c73756198dd9b149ddc7db7867da7a077f6"


def _line(row: dict[str, Any]) -> str:
    return json.dumps(row, separators=(",", ":")) + "\n"


def write_full(checkout: Path, out: Path, files: Sequence[str] = FILES) -> None:
    """``out/<name>.jsonl`` from ``checkout/data/<name>/*.json``, for each of ``files``."""
    out.mkdir(parents=True, exist_ok=True)
    for name in files:
        paths = sorted((checkout / "data" / name).glob("*.json"), key=lambda p: p.name)
        lines = [_line({"id": p.stem, "schema": json.loads(p.read_bytes())}) for p in paths]
        (out / f"{name}.jsonl").write_text("".join(lines))


def draw_sample(
    data_dir: Path,
    out: Path,
    *,
    max_sample: int,
    seed: int = 0,
    files: Sequence[str] = FILES,
) -> dict[str, Any]:
    """Write the sample of the full copy ``data_dir`` to ``out``; returns ``sample.json``."""
    if (data_dir / MANIFEST).exists():
        raise ValueError(f"{data_dir} is itself a sample: draw from a full copy")
    rows = {name: read_rows(data_dir / f"{name}.jsonl") for name in files}
    kept: dict[str, set[int]] = {name: set() for name in files}
    for sample in range(1, max_sample + 1):
        rng = random.Random(seed)  # as load_schemas: one generator across the files, in order
        for name in files:
            kept[name].update(draw(rng, len(rows[name]), sample))
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "source": UPSTREAM,
        "commit": UPSTREAM_COMMIT,
        "folder": "data/",
        "drawn": {"files": list(files), "samples": [1, max_sample], "seed": seed},
        "files": {},
    }
    for name in files:
        text = (data_dir / f"{name}.jsonl").read_bytes()
        lines = [
            _line({"id": rows[name][i]["id"], "index": i, "schema": rows[name][i]["schema"]})
            for i in sorted(kept[name])
        ]
        (out / f"{name}.jsonl").write_text("".join(lines))
        manifest["files"][name] = {
            "rows": len(rows[name]),
            "kept": len(lines),
            "sha256": hashlib.sha256(text).hexdigest(),
        }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.schema_sample",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    full = commands.add_parser("full", help="JSONSchemaBench's .jsonl files from a checkout")
    full.add_argument("checkout", type=Path, help="a checkout of guidance-ai/jsonschemabench")
    full.add_argument("out", type=Path, help="folder for the .jsonl files")
    sample = commands.add_parser("draw", help="the in-repo sample from a full copy")
    sample.add_argument("--data-dir", type=Path, required=True, help="the full .jsonl files")
    sample.add_argument("--out", type=Path, default=DATA_DIR, help=f"default {DATA_DIR}")
    sample.add_argument("--max-sample", type=int, default=25, help="largest --sample (25)")
    sample.add_argument("--seed", type=int, default=0, help="the --seed kept (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "full":
        write_full(args.checkout, args.out)
        print(f"wrote {', '.join(f'{name}.jsonl' for name in FILES)} to {args.out}")
        return 0
    manifest = draw_sample(args.data_dir, args.out, max_sample=args.max_sample, seed=args.seed)
    kept = {name: f["kept"] for name, f in manifest["files"].items()}
    print(f"wrote {sum(kept.values())} schemas to {args.out}: {kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
