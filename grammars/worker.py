"""A long-lived process that builds grammars, and is killed when one takes too long.

Why a process: a grammar can take minutes and gigabytes to build (Outlines' index grows with
DFA states times vocabulary size; one real-world schema makes Outlines' regex builder allocate
20 GB). A thread cannot be stopped, so vLLM's own thread-based timeout leaves the work running;
a process can be killed. The worker loads the tokenizer and builds the backend's vocabulary
once (seconds for a 128k-token vocabulary), then answers one job at a time over a pipe.

Its address space is capped (``RLIMIT_AS``) at its size after start-up plus a headroom, so a
runaway build fails inside the worker instead of waking the machine's OOM killer.

:class:`CompileWorker` is the parent's handle and is blocking; :mod:`grammars.compiler` calls
it from a thread so the event loop never waits on it.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from grammars.shape import Shape

__all__ = ["MAX_REGEX_CHARS", "CompileResult", "CompileWorker", "WorkerStartError"]

_PR_SET_PDEATHSIG = 1

MAX_REGEX_CHARS = 1 << 20
"""An Outlines regex longer than this is refused before its index is built."""


class WorkerStartError(RuntimeError):
    """The worker could not load the tokenizer or build the backend (a server configuration
    problem, never the client's)."""


@dataclass(frozen=True)
class CompileResult:
    """The verdict on one shape."""

    ok: bool
    seconds: float
    """Time spent on the job (the timeout when it timed out)."""
    params: Any = None
    """The engine's ``StructuredOutputsParams`` when ``ok``."""
    error: str | None = None
    timed_out: bool = False
    crashed: bool = False
    """The worker died (out of memory, a native crash); it has been restarted."""
    cached: bool = False


class CompileWorker:
    """The parent's handle on one worker process; one job at a time, blocking calls."""

    def __init__(
        self,
        backend: str,
        tokenizer: str,
        *,
        vocab_size: int | None = None,
        memory_headroom_mb: int = 4096,
        startup_timeout_s: float = 300.0,
    ) -> None:
        self.backend = backend
        self._args = (backend, tokenizer, vocab_size, memory_headroom_mb)
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._ready = False
        self._closed = False
        self._jobs = 0
        self.restarts = 0

    def start(self) -> None:
        """Spawn the process if none is running; returns at once (see :meth:`wait_ready`).

        A plain ``python`` process rather than multiprocessing's spawn, which would
        re-import the server's ``__main__`` in the child; the pipe is a socket pair whose
        child end is the only descriptor the child inherits.
        """
        if self._closed:
            raise WorkerStartError(f"the {self.backend} grammar worker has been closed")
        if self._process is not None and self._process.poll() is None:
            return
        self._stop()
        parent, child = socket.socketpair()
        backend, tokenizer, vocab_size, headroom_mb = self._args
        root = str(Path(__file__).resolve().parent.parent)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        flags = {
            "fd": child.fileno(),
            "backend": backend,
            "tokenizer": tokenizer,
            "vocab-size": vocab_size,
            "headroom-mb": headroom_mb,
            "parent-pid": os.getpid(),
        }
        # -c, not -m: runpy would import grammars.worker twice (the package imports it).
        command = [sys.executable, "-c", "from grammars.worker import main; main()"]
        for flag, value in flags.items():
            if value is not None:
                command += [f"--{flag}", str(value)]
        with child:
            self._process = subprocess.Popen(command, pass_fds=[child.fileno()], env=env)
        self._conn = Connection(parent.detach())

    def wait_ready(self) -> None:
        """Block until the worker has loaded its vocabulary; raise WorkerStartError if it fails."""
        if self._ready and self._process is not None and self._process.poll() is None:
            return
        self.start()
        problem = self._await_ready()
        if problem is not None:
            self._stop()
            raise WorkerStartError(f"the {self.backend} grammar worker failed to start: {problem}")
        self._ready = True

    def _await_ready(self) -> str | None:
        assert self._conn is not None and self._process is not None
        try:
            if not self._conn.poll(self._startup_timeout_s):
                return f"not ready after {self._startup_timeout_s:g} s"
            status, detail = self._conn.recv()
        except (EOFError, OSError):
            return f"exited with code {self._process.wait()}"
        return None if status == "ready" else str(detail)

    def run(self, shape: Shape, timeout_s: float) -> CompileResult:
        """Encode and compile ``shape`` within ``timeout_s`` seconds, or kill the worker."""
        self.wait_ready()
        assert self._conn is not None
        self._jobs += 1
        job, start = self._jobs, time.perf_counter()
        try:
            self._conn.send((job, shape))
            if not self._conn.poll(timeout_s):
                self.restart()
                return CompileResult(False, timeout_s, error="timed out", timed_out=True)
            done, params, error, seconds = self._conn.recv()
        except (EOFError, OSError):
            code = self._exit_code()
            self.restart()
            return CompileResult(
                False, time.perf_counter() - start, error=f"worker died ({code})", crashed=True
            )
        if done != job:
            raise RuntimeError(f"grammar worker answered job {done} to job {job}")
        return CompileResult(error is None, seconds, params=params, error=error)

    def _exit_code(self) -> int | None:
        """The exit code (negative: the signal) of a worker whose pipe has just closed."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return None

    def restart(self) -> None:
        """Kill the worker and spawn a fresh one, which loads while nobody waits for it."""
        self._stop()
        self.restarts += 1
        self.start()

    def close(self) -> None:
        """Kill the worker for good: a job in progress fails, later ones raise."""
        self._closed = True
        self._stop()

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn, self._ready = None, None, False


def _serve(
    conn: Connection, backend: str, tokenizer: str, vocab_size: int | None, headroom_mb: int
) -> None:
    """The worker's main loop: load once, then answer ``(job, shape)`` until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the worker stops
    # Only the worker loads vLLM's backend and the grammar library (the parent imports this
    # module for CompileWorker).
    from grammars.engine_check import EngineCheck

    try:
        check = EngineCheck(backend, tokenizer, vocab_size)
    except Exception as exc:  # reported to the parent, which raises WorkerStartError
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    _limit_address_space(headroom_mb)
    conn.send(("ready", None))
    while True:
        try:
            job, shape = conn.recv()
        except EOFError:
            return
        start = time.perf_counter()
        params, error = None, None
        try:
            params = check.spec.encode(shape)
            if params.regex is not None and len(params.regex) > MAX_REGEX_CHARS:
                raise ValueError(f"its regex has {len(params.regex)} characters")
            check.check(params)
        except MemoryError:
            params, error = None, "out of memory"
        except Exception as exc:  # any failure of vLLM's code on this grammar is the verdict
            params, error = None, str(exc) or type(exc).__name__
        conn.send((job, params, error, time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description="grammar compile worker (started by the server)")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--headroom-mb", type=int, default=4096)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args()
    if args.parent_pid is not None:
        _die_with_parent(args.parent_pid)
    conn = Connection(args.fd)
    _serve(conn, args.backend, args.tokenizer, args.vocab_size, args.headroom_mb)


def _die_with_parent(parent_pid: int) -> None:
    """Have Linux kill the worker when the server dies: a worker busy on a runaway grammar
    would otherwise never read the end of its pipe and run on as an orphan. (Linux ties this
    to the thread that started the worker: GrammarCompiler's one thread, which lives as long
    as the compiler.)"""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return  # not Linux: the worker still exits at the end of its current job
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _limit_address_space(headroom_mb: int) -> None:
    with open("/proc/self/status") as status:
        size_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    limit = size_kb * 1024 + headroom_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


if __name__ == "__main__":
    main()
