"""Counts that reliability tests report (requests sent, served, lost; faults injected,
survived; generated cases) for ``python -m tests.support.reliability``.

A test calls :func:`record`; when ``RELIABILITY_STATS`` names a file, one JSON line per call is
appended to it (safe across processes: each line is one small write), otherwise nothing happens.
The report sums the lines per test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["ENV", "read", "record"]

ENV = "RELIABILITY_STATS"


def record(test: str, **counts: float) -> None:
    """Add ``counts`` (requests_sent=..., faults_injected=..., ...) under ``test``."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"test": test, **counts}) + "\n"
    with Path(path).open("a") as f:
        f.write(line)


def read(path: Path) -> list[dict[str, float | str]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
