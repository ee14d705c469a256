"""``--api-processes N``: N API processes sharing each model's one engine core.

The machinery is vLLM's own (``vllm serve --api-server-count``, whose single API process was
measured as its bottleneck): this process, the supervisor, binds the listening socket once,
binds each engine core's ZMQ listeners (``bind_engine_zmq_listeners``), starts the cores
(``launch_core_engines``) and the API processes (``APIServerProcessManager``, with
:func:`api_process` as each one's body). Each API process is a whole server (every route,
the same settings and API keys) whose engines are clients of the shared cores
(``AsyncLLM.from_vllm_config(client_addresses=...)``), and it accepts connections on the
shared socket the way vLLM's own API processes do: the least loaded one takes the next.

Shared across the processes, in memory the supervisor allocates before starting them:

- admission: each model's bound holds for the server (``Admission``'s shared counters);
- rate limits: each key's windows (``SharedWindows``; the keys are known at start);
- ``/metrics``: prometheus-client's multiprocess mode, a sum over the processes;
- the engine core's death: the supervisor watches the cores (vLLM's
  ``monitor_engine_liveness``) and sets an event every API process watches.

Signals go to the supervisor (PID 1 in a container), which passes each one on: every API
process drains as a single server does (``server.lifecycle``), and once all have exited the
supervisor stops the engine cores and exits with the worst exit code (0 after a drain, 1
after an engine death). If an API process fails, the others drain and the server exits
non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import MutableSequence
from dataclasses import dataclass, replace
from functools import partial
from multiprocessing import connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import multiprocess as prometheus_multiprocess
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from vllm.entrypoints.launchers.launcher import NoSignalServer, create_server_socket
from vllm.utils.system_utils import set_process_title
from vllm.v1.engine.admission_control import SharedAdmissionStats
from vllm.v1.engine.utils import bind_engine_zmq_listeners, launch_core_engines
from vllm.v1.executor import Executor
from vllm.v1.metrics.prometheus import setup_multiprocess_prometheus
from vllm.v1.utils import APIServerProcessManager

from server.http.auth import ApiKeys
from server.http.control import ANONYMOUS
from server.http.ratelimit import SharedWindows
from server.lifecycle import GracefulServer, Lifecycle
from server.logs import setup_logging
from server.models.engine import SharedCore, engine_config
from server.settings import Settings

__all__ = ["ProcessGroup", "ProcessHeader", "api_process", "serve_processes"]

log = logging.getLogger(__name__)

PROCESS_HEADER = "x-api-process"
"""Names, on every response, the API process that answered (its index)."""


@dataclass(frozen=True)
class ProcessGroup:
    """What one API process shares with the others."""

    index: int
    count: int
    admission: list[MutableSequence[int]]
    """Per served model (in the settings' order), every process's admitted requests."""
    windows: MutableSequence[float]
    """Every process's rate-limit windows (:class:`SharedWindows`)."""
    keys: list[str]
    """The rate-limited keys: each API key's ``key_id``, then ``anonymous``."""

    def admission_stats(self, model_ids: list[str]) -> dict[str, SharedAdmissionStats]:
        return {
            model_id: SharedAdmissionStats(
                {"mp_admission_counters": counters}, self.count, self.index
            )
            for model_id, counters in zip(model_ids, self.admission, strict=True)
        }

    def shared_windows(self) -> SharedWindows:
        return SharedWindows(self.windows, self.keys, self.count, self.index)


@dataclass(frozen=True)
class _WorkerArgs:
    """What every API process is started with (vLLM passes it as the ``args`` of
    ``target_server_fn``)."""

    settings: Settings
    group: ProcessGroup
    dead: Any
    """Set by the supervisor when an engine core died."""
    supervisor: int
    more_models: list[list[dict[str, Any]]]
    """The client addresses of models beyond the first, per model, per process (the first
    model's come as vLLM's ``client_config``)."""


class ProcessHeader:
    """Pure ASGI: adds :data:`PROCESS_HEADER` to every response."""

    def __init__(self, app: ASGIApp, *, index: int) -> None:
        self.app = app
        self.index = str(index)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append(PROCESS_HEADER, self.index)
            await send(message)

        await self.app(scope, receive, send_named)


class BalancedServer(GracefulServer, NoSignalServer):
    """Our drain on signals (GracefulServer), and vLLM's accept across API processes
    (NoSignalServer with ``peer_loads``): a pending connection goes to the process with the
    fewest open ones; the event loop's own server would take every queued connection in
    whichever process woke first."""

    capture_signals = uvicorn.Server.capture_signals  # NoSignalServer's installs none

    def __init__(
        self,
        config: uvicorn.Config,
        lifecycle: Lifecycle,
        peer_loads: tuple[MutableSequence[int], int] | None,
    ) -> None:
        super().__init__(config, lifecycle)
        self.peer_loads = peer_loads


def _client_addresses(config: dict[str, Any]) -> dict[str, Any]:
    """vLLM's per-process ``client_config`` without what is not an address."""
    skip = ("client_count", "client_index", "api_server_loads")
    return {k: v for k, v in config.items() if k not in skip}


def api_process(
    listen_address: str, sock: Any, args: _WorkerArgs, client_config: dict[str, Any]
) -> None:
    """The body of one API process (``target_server_fn``): a whole server on ``sock``."""
    from server.app import create_app
    from server.cli import load_service, run_app

    index = client_config["client_index"]
    # vLLM's title for its API processes: tools that tell them from the engine's (the
    # benchmarks' CPU accounting) read both servers' alike.
    set_process_title("APIServer", str(index))
    settings = args.settings
    setup_logging(settings.log_level, api_process=index)
    loads = client_config.get("api_server_loads")
    addresses = [_client_addresses(client_config)]
    for per_process in args.more_models:
        addresses.append(per_process[index])
        for other, config in enumerate(per_process):
            if other != index:  # another process's listeners: not ours to hold open
                config["input_listener"].close()
                config["output_listener"].close()
    count = args.group.count
    cores = [SharedCore(a, count, index, args.dead, args.supervisor) for a in addresses]
    group = replace(args.group, index=index)
    app = create_app(lambda: load_service(settings, cores), settings, group)
    server = partial(BalancedServer, peer_loads=(loads, index) if loads is not None else None)
    log.info("api process starting", extra={"listen": listen_address})
    sys.exit(run_app(app, settings, sockets=[sock], server_class=server))


def serve_processes(settings: Settings) -> int:
    """Start the engine cores and the API processes, pass signals on, and wait; the exit
    code."""
    from server.cli import prepare_models

    count = settings.api_processes
    # Before any API process imports prometheus-client (they inherit the environment).
    setup_multiprocess_prometheus()
    spawn = multiprocessing.get_context("spawn")
    models = prepare_models(settings)
    keys = [*ApiKeys.from_settings(settings).ids, ANONYMOUS]
    group = ProcessGroup(
        index=-1,
        count=count,
        admission=[spawn.RawArray("q", SharedAdmissionStats.num_counters(count)) for _ in models],
        windows=spawn.RawArray("d", SharedWindows.size(len(keys), count)),
        keys=keys,
    )
    dead = spawn.Event()
    sock = create_server_socket((settings.host, settings.port), reuse_port=True)
    listen_address = f"http://{settings.host}:{settings.port}"
    managers: list[Any] = []
    api: APIServerProcessManager | None = None
    try:
        with contextlib.ExitStack() as starting:
            launches, listeners = [], []
            for config, path in models:
                vllm_config = engine_config(
                    config,
                    path,
                    structured_backend=settings.structured_output_backend,
                    api_processes=count,
                    api_process=-1,
                )
                bound = bind_engine_zmq_listeners(vllm_config, count)
                launch = starting.enter_context(
                    launch_core_engines(
                        vllm_config, Executor.get_class(vllm_config), True, bound.addresses
                    )
                )
                launches.append(launch)
                listeners.append(bound)
                managers.append(launch.engine_manager)
            more_models = [
                [
                    {
                        "input_address": i.address,
                        "output_address": o.address,
                        "input_listener": i.socket,
                        "output_listener": o.socket,
                    }
                    for i, o in zip(bound.inputs, bound.outputs, strict=True)
                ]
                for bound in listeners[1:]
            ]
            args = _WorkerArgs(settings, group, dead, os.getpid(), more_models)
            api = APIServerProcessManager(
                listen_address=listen_address,
                sock=sock,
                args=args,  # vLLM passes it on to api_process as it is
                num_servers=count,
                input_listeners=listeners[0].inputs,
                output_listeners=listeners[0].outputs,
                target_server_fn=api_process,
            )
            for bound in listeners[1:]:  # the API processes hold them now
                for listener in (*bound.inputs, *bound.outputs):
                    listener.close()
            _pass_signals_on(api.processes)
            for launch in launches:  # the cores' start is abandoned if an API process fails
                launch.watched_frontend_processes = api.processes
        # Leaving the stack waited for every core to be ready.
        return _supervise(api.processes, managers, dead)
    finally:
        if api is not None:
            api.shutdown(timeout=settings.drain_timeout)
        for manager in managers:
            if manager is not None:
                manager.shutdown()
        sock.close()


def _pass_signals_on(processes: list[BaseProcess]) -> None:
    def forward(signum: int, frame: FrameType | None) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        _signal(processes, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)


def _signal(processes: list[BaseProcess], signum: int) -> None:
    for process in processes:
        if process.pid is not None and process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)


def _watch_core(manager: Any, dead: Any) -> None:
    """Until the cores stop; a core that died tells every API process (``dead``)."""
    manager.monitor_engine_liveness()
    if manager.failed_proc_name is not None:
        dead.set()
        log.error("engine core died", extra={"core": manager.failed_proc_name})


def _supervise(processes: list[BaseProcess], managers: list[Any], dead: Any) -> int:
    """Until every API process has exited; the worst exit code."""
    for manager in managers:
        if manager is not None:
            threading.Thread(target=_watch_core, args=(manager, dead), daemon=True).start()
    code = 0
    running: dict[Any, BaseProcess] = {process.sentinel: process for process in processes}
    while running:
        for sentinel in connection.wait(list(running)):
            process = running.pop(sentinel)
            # Its live gauges leave the sums (prometheus-client's multiprocess mode).
            prometheus_multiprocess.mark_process_dead(process.pid)
            exitcode = process.exitcode or 0
            log.info("api process exited", extra={"worker": process.name, "exit_code": exitcode})
            if exitcode != 0 and code == 0:
                code = exitcode if exitcode > 0 else 1
                if not dead.is_set():  # not after an engine death: each ends by itself then
                    log.error("an API process failed: stopping the others")
                    _signal(list(running.values()), signal.SIGTERM)
    return code or (1 if dead.is_set() else 0)
