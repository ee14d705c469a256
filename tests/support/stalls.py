"""Notices when the test process did not run for seconds, and says so at the end of the run.

CI has failed tests whose client threads read seconds of a server's output at once: the whole
test process had stopped while its servers went on. A daemon thread that wakes four times a
second measures each gap; a long one is kept with the test that was running and what went on
meanwhile, and the run's summary lists them. What tells the causes apart: CPU time stolen by
the hypervisor (the machine paused), the watching thread's own wait for a core (runnable but
not run: the kernel gave the cores to others), this process's CPU time (another thread kept
the interpreter busy) and the time every task of the machine waited for memory or disk.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Stall", "StallWatch"]

TICK = 0.25
THRESHOLD = 2.0
"""Seconds without a tick that count as a stall."""
HZ = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Stall:
    test: str
    seconds: float
    stolen: float
    """CPU seconds the hypervisor took from this machine's cores meanwhile."""
    runnable: float
    """Seconds the watching thread waited for a core."""
    own_cpu: float
    """CPU seconds this process ran meanwhile."""
    memory_io: float
    """Seconds in which some task of the machine waited for memory or disk (pressure stall
    information, summed)."""

    def __str__(self) -> str:
        return (
            f"{self.seconds:.1f} s in {self.test or 'no test'}: stolen {self.stolen:.1f} s, "
            f"waiting for a core {self.runnable:.1f} s, own CPU {self.own_cpu:.1f} s, "
            f"memory or disk stalls {self.memory_io:.1f} s"
        )


def _number(path: str, pick: Callable[[str], float]) -> float:
    try:
        with open(path) as f:
            return pick(f.read())
    except (OSError, ValueError, IndexError):
        return 0.0


def _stolen() -> float:
    return _number("/proc/stat", lambda text: int(text.split()[8]) / HZ)


def _runnable() -> float:
    return _number("/proc/thread-self/schedstat", lambda text: int(text.split()[1]) / 1e9)


def _pressure(resource: str) -> float:
    """Microseconds in which some task waited for ``resource``, since boot, in seconds."""
    return _number(
        f"/proc/pressure/{resource}",
        lambda text: int(text.split("\n")[0].rsplit("total=", 1)[1]) / 1e6,
    )


def _readings() -> tuple[float, ...]:
    return (
        time.monotonic(),
        _stolen(),
        _runnable(),
        time.process_time(),
        _pressure("memory") + _pressure("io"),
    )


class StallWatch:
    def __init__(self) -> None:
        self.stalls: list[Stall] = []
        self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        last = _readings()
        while True:
            time.sleep(TICK)
            now = _readings()
            if now[0] - last[0] - TICK > THRESHOLD:
                test = os.environ.get("PYTEST_CURRENT_TEST", "")
                self.stalls.append(Stall(test, *(b - a for a, b in zip(last, now, strict=True))))
            last = now
