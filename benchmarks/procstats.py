"""CPU time and peak memory of a server process and its children, read from ``/proc``.

The API process is the one we started (or whose pid was given); its descendants are the
engine core and workers vLLM spawns. CPU is ``utime + stime`` (``/proc/<pid>/stat``), sampled
before and after each run; peak memory is ``VmHWM`` (``/proc/<pid>/status``), the resident
high-water mark since the process started. Children's figures are summed over the live
descendants at sampling time. Linux only; elsewhere every figure is ``None``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcSample", "cpu_seconds", "descendants", "sample", "status_kib"]

PROC = Path("/proc")


def _ticks_per_second() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of ``pid`` itself, or ``None`` if it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _ticks_per_second()


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children of every thread, recursively)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = list((PROC / str(parent) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for child in children:
                if child not in found:
                    found.append(child)
                    stack.append(child)
    return found


def status_kib(pid: int, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` such as ``VmHWM`` or ``VmRSS``."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class ProcSample:
    """One reading of a server: CPU seconds so far and peak resident memory."""

    api_cpu_s: float
    children_cpu_s: float
    api_peak_rss_mib: float | None
    children_peak_rss_mib: float | None
    children: int


def sample(pid: int | None) -> ProcSample | None:
    """Read ``pid`` and its descendants now; ``None`` without a pid or once it exited."""
    if pid is None:
        return None
    api_cpu = cpu_seconds(pid)
    if api_cpu is None:
        return None
    kids = descendants(pid)
    kid_cpu = sum(c for k in kids if (c := cpu_seconds(k)) is not None)
    kid_hwm = [h for k in kids if (h := status_kib(k, "VmHWM")) is not None]
    api_hwm = status_kib(pid, "VmHWM")
    return ProcSample(
        api_cpu_s=api_cpu,
        children_cpu_s=kid_cpu,
        api_peak_rss_mib=api_hwm / 1024 if api_hwm is not None else None,
        children_peak_rss_mib=sum(kid_hwm) / 1024 if kid_hwm else None,
        children=len(kids),
    )
