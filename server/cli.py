"""``python -m server`` / ``llama-serve``: serve (default) or ``build-model``.

The load benchmark is its own program, ``python -m benchmarks``.

The flags are generated from ``Settings``: every setting's docstring is its ``--help`` text and
every flag has an environment twin, ``LLAMA_SERVE_<NAME>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin

import uvicorn

from server.lifecycle import GracefulServer, Lifecycle
from server.logs import setup_logging
from server.models.config import CONFIG_DIR, ModelConfig, load_model_config
from server.models.store import ensure_model
from server.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from server.chat.service import ChatService
    from server.models.engine import SharedCore

__all__ = [
    "build_parser",
    "load_service",
    "main",
    "prepare_environment",
    "prepare_models",
    "run_app",
]

VLLM_LOGGING_CONFIG = Path(__file__).with_name("vllm_logging.json")

log = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-serve",
        description="Cerebras- and OpenAI-compatible Chat Completions server on vLLM. "
        "Subcommand: 'build-model NAME' (prepare weights only). The load benchmark is "
        "'python -m benchmarks'.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"LLAMA_SERVE_{name.upper()}"
        help_text = f"{field.description} [env {env}; default: {_default(field)}]"
        annotation = field.annotation
        if get_origin(annotation) is list or name == "model":
            parser.add_argument(flag, action="append", help=help_text)
        elif annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            choices = get_args(annotation) if "Literal" in str(annotation) else None
            parser.add_argument(flag, choices=choices or None, help=help_text)
    return parser


def _default(field: Any) -> Any:
    return field.default_factory() if field.default_factory else field.default


def settings_from_args(argv: list[str]) -> Settings:
    args = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**given)


def prepare_models(settings: Settings) -> list[tuple[ModelConfig, str]]:
    """Each served model's config and folder, fetched or built first if needed."""
    config_dir = settings.config or CONFIG_DIR
    # The engine compiles each grammar again with its own limit (5 s by default); what passed
    # our bounded check must not fail there, so its limit sits above ours, unless the
    # operator set it. (JSON mode's index alone takes 8-20 s on Llama's 128k vocabulary on a
    # 2-core CPU.)
    limit = max(60, int(settings.grammar_timeout * 3))
    os.environ.setdefault("VLLM_REGEX_COMPILATION_TIMEOUT_S", str(limit))
    prepared = []
    for name in settings.model_list():
        config = load_model_config(name, config_dir)
        if settings.eager:
            config = config.model_copy(update={"enforce_eager": True})
        if settings.stream_interval is not None:
            config = config.model_copy(update={"stream_interval": settings.stream_interval})
        started = time.monotonic()
        path = ensure_model(config, settings.cache_dir)
        log.info(
            "model files ready",
            extra={
                "model": config.id,
                "path": path,
                "seconds": round(time.monotonic() - started, 1),
            },
        )
        prepared.append((config, path))
    return prepared


def load_service(settings: Settings, cores: Sequence[SharedCore] = ()) -> ChatService:
    """Fetch or build each model, start its engine (or, with ``cores``, connect to the engine
    core the supervisor started for it), and wrap them in a ChatService."""
    # vLLM takes seconds to import: `--help` and `build-model` do without it.
    from grammars import GrammarCompiler
    from server.chat.service import ChatService
    from server.models.engine import Engine
    from server.models.pool import ModelPool, ServedModel

    served = []
    for i, (config, path) in enumerate(prepare_models(settings)):
        # The grammar worker loads its vocabulary while the engine loads (seconds for SmolLM2,
        # tens of seconds for Llama's 128k tokens); the app's start-up waits for both.
        grammar = GrammarCompiler(
            path,  # the folder vLLM loads the tokenizer from
            backend=settings.structured_output_backend,
            timeout=settings.grammar_timeout,
            cache_size=settings.grammar_cache_size,
            cache_bytes=int(settings.grammar_cache_mib * 2**20),
        )
        grammar.spawn()
        try:
            engine = Engine(
                config,
                path,
                structured_backend=settings.structured_output_backend,
                core=cores[i] if cores else None,
            )
        except BaseException:
            grammar.close()
            raise
        served.append(ServedModel(config, engine, grammar=grammar, created=int(time.time())))
    return ChatService(ModelPool(served), grammar_backend=settings.structured_output_backend)


def serve(settings: Settings) -> None:
    """Serve until SIGTERM (drain, then exit 0) or an engine death (exit 1)."""
    setup_logging(settings.log_level)
    keys = len(settings.api_key) + (settings.api_key_file is not None)
    log.info(
        "starting",
        extra={
            "models": settings.model_list(),
            "host": settings.host,
            "port": settings.port,
            "auth": bool(keys),
            "api_processes": settings.api_processes,
            "max_waiting_requests": settings.max_waiting_requests,
            "request_timeout_s": settings.request_timeout,
            "drain_timeout_s": settings.drain_timeout,
        },
    )
    if not keys and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("no API key set: anyone who can reach this port can use it")
    if settings.api_processes > 1:
        from server.processes import serve_processes

        sys.exit(serve_processes(settings))
    # The app imports vLLM (seconds): only when serving.
    from server.app import create_app

    app = create_app(lambda: load_service(settings), settings)
    sys.exit(run_app(app, settings))


def run_app(
    app: FastAPI,
    settings: Settings,
    sockets: list[socket.socket] | None = None,
    server_class: Callable[[uvicorn.Config, Lifecycle], GracefulServer] = GracefulServer,
) -> int:
    """Serve ``app`` (on ``sockets``, else on the settings' host and port) until it stops;
    the process's exit code."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # server.access writes one line per request instead
        log_config=None,  # uvicorn's own lines go through our JSON handler (server.logs)
        # Our drain comes first (GracefulServer); this only bounds what is left after it.
        timeout_graceful_shutdown=5,
    )
    server = server_class(config, app.state.lifecycle)
    server.run(sockets)
    if not server.started:
        return 3  # as uvicorn.run: the app failed to start
    return int(app.state.lifecycle.exit_code)


def build_model(argv: list[str]) -> None:
    """Prepare a model's files in the cache without serving it (CI warm-up, Docker builds)."""
    settings = settings_from_args([])
    for name in argv or settings.model_list():
        started = time.monotonic()
        path = ensure_model(load_model_config(name), settings.cache_dir)
        print(f"{name}: {path} ({time.monotonic() - started:.1f} s)")


def prepare_environment() -> None:
    """What must be set before vLLM is imported (here and in a Ray Serve replica)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vLLM's own lines (its engine core's too: a child process reads the same variable) as
    # JSON through server.logs, before vLLM is imported and configures its logging.
    os.environ.setdefault("VLLM_LOGGING_CONFIG_PATH", str(VLLM_LOGGING_CONFIG))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    prepare_environment()
    if argv[:1] == ["build-model"]:
        build_model(argv[1:])
        return
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    serve(settings_from_args(argv))
