"""A local Ray cluster for end-to-end tests: a head node and, optionally, worker nodes, each its
own ``ray start`` process with its own CPUs, all on this machine.

Several nodes on one host need their own node-manager, object-manager and worker ports. Every
command has a timeout, and ``stop`` (``ray stop --force``, then any process the cluster left
behind) runs even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.support.serverproc import ROOT, free_port

__all__ = ["RayCluster", "cluster_processes", "memory_mib", "ray_cluster"]

RAY = str(Path(sys.executable).with_name("ray"))
SERVE = str(Path(sys.executable).with_name("serve"))
OBJECT_STORE_BYTES = 100 * 2**20
"""Ray's minimum-sized shared object store per node: the engines pass no objects through it."""


@dataclass
class RayCluster:
    port: int
    log_dir: Path
    env: dict[str, str]
    nodes: int = 0
    metrics_port: int = field(default_factory=free_port)
    """The head node's Prometheus export of Ray's own metrics (Serve's per-replica series)."""
    _seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_node(self, *, cpus: int) -> None:
        """``ray start`` a head (the first call) or a worker node with ``cpus`` CPUs."""
        base = 12000 + 1000 * self.nodes  # each node its own range of worker ports
        args = [
            "--num-cpus",
            str(cpus),
            "--node-manager-port",
            str(free_port()),
            "--object-manager-port",
            str(free_port()),
            "--min-worker-port",
            str(base),
            "--max-worker-port",
            str(base + 999),
            "--object-store-memory",
            str(OBJECT_STORE_BYTES),
            "--disable-usage-stats",
        ]
        if self.nodes == 0:
            args = [
                "--head",
                "--port",
                str(self.port),
                "--include-dashboard=false",
                "--metrics-export-port",
                str(self.metrics_port),
                *args,
            ]
        else:
            args = ["--address", self.address, *args]
        self.run(RAY, "start", *args, timeout=120)
        self.nodes += 1
        self._seen |= {p.pid: p for p in cluster_processes()}

    def run(self, *command: str, timeout: float) -> str:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[:2]} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done.stdout

    def python(self, script: str, timeout: float = 180) -> str:
        """Run ``script`` as a driver of this cluster (its own process: Ray's client state
        stays out of the test process)."""
        return self.run(sys.executable, "-c", script, timeout=timeout)

    def popen(self, *command: str, log_name: str) -> subprocess.Popen[bytes]:
        with (self.log_dir / log_name).open("wb") as log:
            return subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        """Everything down: Ray's processes, then whatever they started (engine cores)."""
        self._seen |= {p.pid: p for p in cluster_processes()}
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run([RAY, "stop", "--force"], env=self.env, capture_output=True, timeout=120)
        # psutil checks that a pid still names the process it found (not a reused pid).
        for proc in [*self._seen.values(), *cluster_processes()]:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def cluster_processes() -> list[psutil.Process]:
    """Ray's processes on this machine (GCS, raylets, workers, replicas) and their children
    (the replicas' engine cores)."""
    roots = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            line = " ".join(proc.info["cmdline"] or [])
            if proc.info["name"] in ("raylet", "gcs_server") or line.startswith("ray::"):
                roots.append(proc)
    found: dict[int, psutil.Process] = {}
    for proc in roots:
        found[proc.pid] = proc
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                found[child.pid] = child
    return list(found.values())


def memory_mib(processes: list[psutil.Process]) -> tuple[float, float]:
    """(RSS, PSS) summed over ``processes``, in MiB: RSS counts the libraries they share (torch)
    once per process, PSS splits shared pages among them."""
    rss = pss = 0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
    return rss / 2**20, pss / 2**20


@contextlib.contextmanager
def ray_cluster(log_dir: Path, *, node_cpus: list[int]) -> Iterator[RayCluster]:
    """A cluster of one node per entry of ``node_cpus`` (the head first), stopped on exit.
    Its workers import this checkout's code (``PYTHONPATH``), not an installed copy."""
    env = os.environ | {
        "PYTHONPATH": str(ROOT),
        "RAY_USAGE_STATS_ENABLED": "0",
        # Ray runs its workers at nice 15 (its own daemons first); on a machine shared with
        # other servers a replica's engine would then barely run.
        "RAY_worker_niceness": "0",
        # Ray's memory monitor kills its workers when the machine's memory passes 95%, whoever
        # uses it; on a machine shared with other servers that would be their memory.
        "RAY_memory_monitor_refresh_ms": "0",
        "LLAMA_SERVE_EAGER": "true",
    }
    cluster = RayCluster(port=free_port(), log_dir=log_dir, env=env)
    try:
        for cpus in node_cpus:
            cluster.start_node(cpus=cpus)
        yield cluster
    finally:
        cluster.stop()
