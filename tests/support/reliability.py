"""``python -m tests.support.reliability``: run the hostile-input catalogue, the fuzzers, the
soak and the fault tests, then print one table.

The tests are every test marked ``reliability`` plus the operations tests that inject a fault
(engine death, SIGTERM under load, the full queue, the request timeout), chosen by name.
Sizes are the CI defaults; ``--full`` uses the sizes of the README's table, and any pytest
option passes through (``--soak-requests 2000``). A JUnit XML report is written to
``results/reliability.xml``. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.stats import ENV, read

__all__ = ["FULL", "main"]

ROOT = Path(__file__).resolve().parents[2]
FAULT_NAMES = ("engine_death", "sigterm", "queue_bound", "request_timeout")
"""Operations tests (tests/e2e/test_engine_death.py, test_shutdown.py, test_production.py,
test_deadline.py) that inject a fault: one fault each."""
FULL = ["--soak-requests", "1000", "--storm-clients", "200", "--fuzz-examples", "100",
        "--property-examples", "100"]  # fmt: skip
PARTS = {
    "test_hostile": "hostile inputs",
    "test_limits": "hostile inputs",
    "test_jsonscan": "hostile inputs",
    "test_scan_shapes": "hostile inputs",
    "test_openapi": "schema fuzzing",
    "test_injection": "prompt injection",
    "test_schema_fuzz": "schema fuzzing",
    "test_property": "property tests",
    "test_load.py::test_soak": "soak",
}


def part_of(nodeid: str) -> str:
    for key, part in PARTS.items():
        if key in nodeid:
            return part
    return "faults"


@dataclass
class Row:
    tests: int = 0
    passed: int = 0
    gaps: int = 0
    """Known gaps: tests marked xfail (strict) that fail as expected."""
    counts: dict[str, float] = field(default_factory=lambda: defaultdict(float))


class Collector:
    """A pytest plugin: keeps the reliability tests, and the outcome of each."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        keep = [
            item
            for item in items
            if item.get_closest_marker("reliability") or any(n in item.name for n in FAULT_NAMES)
        ]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or report.outcome != "passed":
            if report.when == "call" and hasattr(report, "wasxfail"):
                outcome = "xfailed" if report.skipped else "xpassed"
            else:
                outcome = report.outcome
            if self.outcomes.get(report.nodeid) in (None, "passed"):
                self.outcomes[report.nodeid] = outcome


def build_rows(outcomes: dict[str, str], stats: list[dict[str, Any]]) -> dict[str, Row]:
    rows: dict[str, Row] = defaultdict(Row)
    for nodeid, outcome in outcomes.items():
        row = rows[part_of(nodeid)]
        row.tests += 1
        row.passed += outcome == "passed"
        row.gaps += outcome == "xfailed"
        if part_of(nodeid) == "faults" and any(n in nodeid for n in FAULT_NAMES):
            row.counts["faults_injected"] += 1
            row.counts["faults_survived"] += outcome == "passed"
    by_test = {"schema_fuzz": "schema fuzzing", "property": "property tests", "soak": "soak"}
    for line in stats:
        row = rows[by_test.get(str(line["test"]), "faults")]
        for key, value in line.items():
            if key != "test" and isinstance(value, int | float):
                row.counts[key] += value
    return rows


def render(rows: dict[str, Row], seconds: float) -> str:
    columns = ["part", "tests", "passed", "known gaps", "cases", "sent", "served", "lost",
               "faults", "survived"]  # fmt: skip
    lines = [columns]
    total = Row()
    order = [*PARTS.values(), "faults"]
    for part in sorted(rows, key=lambda p: order.index(p) if p in order else len(order)):
        row = rows[part]
        total.tests += row.tests
        total.passed += row.passed
        total.gaps += row.gaps
        for key, value in row.counts.items():
            total.counts[key] += value
        lines.append(_cells(part, row))
    lines.append(_cells("total", total))
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    text = [
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    text.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    when = datetime.date.today().isoformat()
    head = (
        f"Reliability report, {when}: {os.cpu_count()} CPU cores, CPU only, "
        f"{platform.system()} {platform.machine()}, {seconds / 60:.1f} min"
    )
    return head + "\n\n" + "\n".join(text)


def _cells(part: str, row: Row) -> list[str]:
    """Measured numbers; "-" where a part does not measure that column."""
    c = row.counts

    def n(key: str) -> str:
        return str(int(c[key])) if key in c else "-"

    cases = n("cases") if "cases" in c else str(row.tests)
    lost = str(int(c.get("requests_lost", 0))) if "requests_sent" in c else "-"
    return [
        part,
        str(row.tests),
        str(row.passed),
        str(row.gaps),
        cases,
        n("requests_sent"),
        n("requests_served"),
        lost,
        n("faults_injected"),
        n("faults_survived"),
    ]


STANDARD = {"cases", "requests_sent", "requests_served", "requests_lost", "faults_injected",
            "faults_survived"}  # fmt: skip


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def details(stats: list[dict[str, Any]], outcomes: dict[str, str]) -> str:
    """The other numbers the tests measured (memory, latencies, outcomes by kind), summed
    per test, then the tests that did not pass."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in stats:
        for key, value in line.items():
            if key not in STANDARD and key != "test" and not key.startswith("status_"):
                sums[str(line["test"])][key] += value
    lines = [
        f"- {test}: " + ", ".join(f"{k} {_number(v)}" for k, v in sorted(values.items()))
        for test, values in sums.items()
    ]
    lines += [f"- {result}: {nodeid}" for nodeid, result in outcomes.items() if result != "passed"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.reliability", description=__doc__
    )
    parser.add_argument("--full", action="store_true", help="the README's sizes: " + " ".join(FULL))
    args, passthrough = parser.parse_known_args(argv)
    (ROOT / "results").mkdir(exist_ok=True)
    stats_file = Path(tempfile.mkstemp(prefix="reliability-", suffix=".jsonl")[1])
    os.environ[ENV] = str(stats_file)
    collector = Collector()
    started = time.monotonic()
    pytest_args = [
        "tests",
        "-p", "no:cacheprovider",
        f"--junitxml={ROOT / 'results' / 'reliability.xml'}",
        *(FULL if args.full else []),
        *passthrough,
    ]  # fmt: skip
    code = pytest.main(pytest_args, plugins=[collector])
    stats = read(stats_file)
    stats_file.unlink(missing_ok=True)
    rows = build_rows(collector.outcomes, stats)
    print("\n" + render(rows, time.monotonic() - started))
    print("\n" + details(stats, collector.outcomes))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
