"""The server, with the CPU time of its event loop thread counted per layer of the token path.

``python -m benchmarks.layer_clock <server arguments>`` runs ``python -m server`` with the
per-token functions of vLLM's output path and uvicorn's send wrapped in thread-CPU clocks
(``time.thread_time``), and writes the totals, with every thread's CPU from ``/proc``, to
``$LAYER_CLOCK_OUT`` each second. ``python -m benchmarks.api_cpu --layers`` starts the server
this way and prints each layer's CPU per output token beside the whole process's.

The clocks are a measurement, not a profile's sample: a thread waiting for a core counts
nothing (py-spy counts it busy). Each clock reading is a system call, about a microsecond, so
the totals run a little high; the layers' shares are what to read.
"""

from __future__ import annotations

import functools
import json
import os
import runpy
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks.procstats import thread_cpu_seconds

LAYERS: list[tuple[str, str, str]] = [
    # (module, class, method): sync functions, each timed alone
    ("vllm.v1.serial_utils", "MsgpackDecoder", "decode"),
    ("vllm.v1.engine.output_processor", "OutputProcessor", "process_outputs"),
    ("vllm.v1.engine.output_processor", "OutputProcessor", "_update_stats_from_output"),
    ("vllm.v1.engine.detokenizer", "BaseIncrementalDetokenizer", "update"),
    ("vllm.v1.engine.output_processor", "RequestState", "make_request_output"),
    ("vllm.v1.metrics.loggers", "StatLoggerManager", "record"),
]
"""What is clocked. ``process_outputs`` holds the three after it (statistics, detokenizing,
building each ``RequestOutput``); ``record`` is the stat loggers' work per engine step."""

_totals: dict[str, list[float]] = {}


def _count(name: str, started: float) -> None:
    """One call of ``name`` that began at thread time ``started``, in the totals."""
    total = _totals.setdefault(name, [0.0, 0])
    total[0] += time.thread_time() - started
    total[1] += 1


def _clocked(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def clocked(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            _count(name, started)

    return clocked


def _clock_uvicorn_send() -> None:
    """uvicorn's ``send`` of each response body (the socket write): async, but it waits only
    when the client stopped reading."""
    from uvicorn.protocols.http import httptools_impl

    cycle = httptools_impl.RequestResponseCycle
    send = cycle.send

    async def clocked(self: Any, message: Any) -> None:
        started = time.thread_time()
        try:
            await send(self, message)
        finally:
            _count("uvicorn send " + message["type"], started)

    cycle.send = clocked  # type: ignore[method-assign]


def _write_totals(path: str) -> None:
    while True:
        snapshot = {"layers": _totals, "threads": thread_cpu_seconds(os.getpid())}
        with open(path + ".tmp", "w") as out:
            json.dump(snapshot, out)
        os.replace(path + ".tmp", path)
        time.sleep(1)


def main() -> None:
    import importlib

    for module, cls, method in LAYERS:
        owner = getattr(importlib.import_module(module), cls)
        setattr(owner, method, _clocked(f"{cls}.{method}", getattr(owner, method)))
    _clock_uvicorn_send()
    out = os.environ["LAYER_CLOCK_OUT"]
    threading.Thread(target=_write_totals, args=(out,), daemon=True).start()
    sys.argv = ["server", *sys.argv[1:]]
    runpy.run_module("server", run_name="__main__", alter_sys=True)


# vLLM's engine core is started with spawn, which re-imports the main module: keep the guard.
if __name__ == "__main__":
    main()
