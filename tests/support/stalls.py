"""Notices when the test process did not run for seconds, and says so at the end of the run.

CI has failed tests whose client threads read seconds of a server's output at once: the whole
test process had stopped while its servers went on. A daemon thread that wakes four times a
second measures each gap; a long one is kept with the test that was running and what the
machine did meanwhile (CPU time stolen by the hypervisor, this process's own CPU time), and
the run's summary lists them.
"""

from __future__ import annotations

import os
import threading
import time
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
    own_cpu: float
    """CPU seconds this process ran meanwhile."""

    def __str__(self) -> str:
        return (
            f"{self.seconds:.1f} s in {self.test or 'no test'}: "
            f"{self.stolen:.1f} CPU-s stolen by the hypervisor, {self.own_cpu:.1f} CPU-s our own"
        )


def _stolen() -> float:
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return 0.0
    return int(fields[8]) / HZ if len(fields) > 8 else 0.0


class StallWatch:
    def __init__(self) -> None:
        self.stalls: list[Stall] = []
        self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        last, stolen, cpu = time.monotonic(), _stolen(), time.process_time()
        while True:
            time.sleep(TICK)
            now, now_stolen, now_cpu = time.monotonic(), _stolen(), time.process_time()
            if now - last - TICK > THRESHOLD:
                test = os.environ.get("PYTEST_CURRENT_TEST", "")
                gap = Stall(test, now - last, now_stolen - stolen, now_cpu - cpu)
                self.stalls.append(gap)
            last, stolen, cpu = now, now_stolen, now_cpu
