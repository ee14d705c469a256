"""CPU time and peak memory of a server's API processes and of its engine, from ``/proc``.

The API side is the process we started (or whose pid was given) and every descendant titled
as an API process (``VLLM::APIServer_<i>``: ``vllm serve --api-server-count N`` titles its
API processes so, and ours with ``--api-processes N`` take the same title); with several API
processes the process we started supervises them, and counts with them. Every other
descendant (the engine core, its workers) is a child. CPU is ``utime + stime``
(``/proc/<pid>/stat``), sampled before and after each run; peak memory is ``VmHWM``
(``/proc/<pid>/status``), the resident high-water mark since the process started. Each side's
figures are summed over its live processes at sampling time. Linux only; elsewhere every
figure is ``None``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "API_TITLE",
    "ProcSample",
    "cpu_seconds",
    "descendants",
    "is_api_process",
    "sample",
    "status_kib",
    "thread_cpu_seconds",
]

PROC = Path("/proc")
API_TITLE = "VLLM::APIServer"
"""How vLLM titles each of its API processes (``setproctitle``), and ours."""


def _ticks_per_second() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def _stat(path: Path) -> tuple[str, float] | None:
    """The command name and user plus system CPU seconds in a ``stat`` file of ``/proc`` (a
    process's or a thread's), or ``None`` if it is gone."""
    try:
        text = path.read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return name, (utime + stime) / _ticks_per_second()


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of ``pid`` itself, or ``None`` if it is gone."""
    stat = _stat(PROC / str(pid) / "stat")
    return None if stat is None else stat[1]


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User plus system CPU seconds of each live thread of ``pid``, by ``tid:name``."""
    seconds: dict[str, float] = {}
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return seconds
    for task in tasks:
        stat = _stat(task / "stat")
        if stat is not None:  # else the thread ended
            seconds[f"{task.name}:{stat[0]}"] = stat[1]
    return seconds


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


def is_api_process(pid: int) -> bool:
    """Whether ``pid`` is titled as an API process (its command line is the title)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().startswith(API_TITLE.encode())
    except OSError:
        return False


@dataclass(frozen=True)
class ProcSample:
    """One reading of a server: CPU seconds so far and peak resident memory."""

    api_cpu_s: float
    children_cpu_s: float
    api_peak_rss_mib: float | None
    children_peak_rss_mib: float | None
    children: int
    api_processes: int = 1
    """Processes counted as the API side: the one started, and its titled API processes."""


def sample(pid: int | None) -> ProcSample | None:
    """Read ``pid`` and its descendants now; ``None`` without a pid or once it exited."""
    if pid is None:
        return None
    api_cpu = cpu_seconds(pid)
    if api_cpu is None:
        return None
    api, kids = [pid], []
    for k in descendants(pid):
        (api if is_api_process(k) else kids).append(k)
    api_cpu += sum(c for k in api[1:] if (c := cpu_seconds(k)) is not None)
    kid_cpu = sum(c for k in kids if (c := cpu_seconds(k)) is not None)
    api_hwm = [h for k in api if (h := status_kib(k, "VmHWM")) is not None]
    kid_hwm = [h for k in kids if (h := status_kib(k, "VmHWM")) is not None]
    return ProcSample(
        api_cpu_s=api_cpu,
        children_cpu_s=kid_cpu,
        api_peak_rss_mib=sum(api_hwm) / 1024 if api_hwm else None,
        children_peak_rss_mib=sum(kid_hwm) / 1024 if kid_hwm else None,
        children=len(kids),
        api_processes=len(api),
    )
