"""Start the real server (real engine) in a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ServerProcess", "config_variant", "free_port", "model_dir", "start_server"]

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

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

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


def config_variant(name: str, folder: Path, **changes: Any) -> Path:
    """A copy of the bundled model config ``name`` with ``changes`` (e.g. ``max_num_seqs=2``),
    written in ``folder``: pass its path as ``--model``."""
    import yaml

    from server.models.config import CONFIG_DIR

    config = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    path = folder / f"{name}-variant.yaml"
    path.write_text(yaml.safe_dump(config | changes))
    return path


def model_dir(name: str) -> Path:
    """The model's folder in the cache, fetched or built first if needed (as the server does)."""
    from server.models.config import load_model_config
    from server.models.store import ensure_model
    from server.settings import Settings

    return Path(ensure_model(load_model_config(name), Settings().cache_dir))
