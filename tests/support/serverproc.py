"""Start the real server (real engine) in a subprocess for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ServerProcess", "free_port", "model_dir", "preset_file", "start_server"]

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = float(os.environ.get("TEST_SERVER_START_TIMEOUT", "600"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path
    _json_lines: list[str] = field(default_factory=list, repr=False)
    """The log's JSON lines read so far: each read takes only what was written since."""
    _read_to: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_line(
        self, value: str, field: str = "request_id", wait: float = 30
    ) -> dict[str, Any]:
        """The JSON log line whose ``field`` is ``value`` (a request's access-log line, by
        ``request_id`` or response ``id``), once written: after the response is sent (``wait``
        has room for a loaded machine; a line that is there returns at once)."""
        needle = json.dumps({field: value})[1:-1]  # '"field": "value"', as the log writes it
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            # a request just answered: its line is near the end
            for text in reversed(self._json_lines_so_far()):
                if needle in text:
                    return json.loads(text)
            time.sleep(0.2)
        raise AssertionError(f"no log line with {needle} after {wait} s")

    def _json_lines_so_far(self) -> list[str]:
        """Every JSON line of the log so far, reading only the whole lines written since the
        last call (the session server's log grows to megabytes; its probes ask each second)."""
        with self.log_path.open("rb") as log:
            log.seek(self._read_to)
            new = log.read()
        whole = new[: new.rfind(b"\n") + 1]  # a line still being written waits for the next
        self._read_to += len(whole)
        lines = whole.decode(errors="replace").split("\n")
        self._json_lines += [line for line in lines if line.startswith("{")]
        return self._json_lines

    def seconds(self, request_id: str) -> float:
        """How long the server took over a request, by its own clock (the access log's
        ``duration_s``): a bound that holds while the test process stalls."""
        return float(self.access_line(request_id)["duration_s"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def start_server(*args: str, log_dir: Path, env: dict[str, str] | None = None) -> ServerProcess:
    """``python -m server ARGS --port <free>`` with eager engines; waits for /health."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    full_env = os.environ | {"LLAMA_SERVE_EAGER": "true"} | (env or {})
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port), *args],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(proc, port, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()[-5000:]}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready in {START_TIMEOUT} s:\n{server.log()[-5000:]}")


def preset_file(folder: Path, name: str, **overrides: Any) -> Path:
    """The model preset ``configs/<name>.yaml`` with ``overrides``, written into ``folder`` (a
    server started with ``--model <file>`` serves the preset's model id with them)."""
    import yaml

    from server.models.config import CONFIG_DIR

    config = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    path = folder / f"{name}-{'-'.join(f'{k}-{v}' for k, v in overrides.items())}.yaml"
    path.write_text(yaml.safe_dump(config | overrides))
    return path


def model_dir(name: str) -> Path:
    """The model's folder in the cache, fetched or built first if needed (as the server does)."""
    from server.models.config import load_model_config
    from server.models.store import ensure_model
    from server.settings import Settings

    return Path(ensure_model(load_model_config(name), Settings().cache_dir))
