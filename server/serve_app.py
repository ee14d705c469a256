"""Replicas of this server behind Ray Serve: ``serve run configs/serve/ray-serve.yaml``.

Each replica is the whole server (its own engine, admission, keys, metrics, access log) as
a Ray Serve deployment wrapping our FastAPI app, whose lifespan starts the engine as under
uvicorn. Ray Serve's HTTP proxy in front passes requests and responses (event streams too)
through unchanged; ``x-replica-id`` names the replica that answered.

What maps to what (README "Scaling out"):

- a replica's ``max_ongoing_requests`` is our admission limit (``max_num_seqs +
  max_waiting_requests`` summed over its models), so the proxy queues rather than sending
  a replica more than it would admit;
- autoscaling adds a replica once replicas hold more than ``max_num_seqs`` requests each
  (beyond that they queue inside the engine);
- Ray Serve's health check asks what ``/health`` answers (``health_problem``): a replica
  whose engine died is replaced;
- a replica's ``num_gpus`` is the GPUs its engines use (tensor x pipeline parallel) with
  ``gpu: true``, 0 on CPU.

Routing: Ray Serve's default router (the less loaded of two random replicas). Its prefix
routing (``PrefixCacheAffinityRouter`` in ``ray.llm``) reads the prompt from a deployment
handle call's arguments; an HTTP request through the proxy reaches the router before its body
does, so there is no prompt to route by.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application, Deployment
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.cli import load_service, prepare_environment
from server.logs import setup_logging
from server.models.config import CONFIG_DIR, load_model_config
from server.settings import Settings

__all__ = ["LlamaServe", "Replica", "ServeArgs", "build", "replica_options"]

REPLICA_HEADER = b"x-replica-id"
REQUEST_ID_HEADER = b"x-request-id"


class ServeArgs(BaseModel):
    """The ``args`` of the application in a Serve config file."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = Field(default_factory=dict)
    """Each replica's server settings, as ``python -m server --help`` names them."""
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs Ray reserves for a replica (its engine steps on one core)."""
    num_gpus: float | None = Field(default=None, ge=0)
    """GPUs per replica; unset: tensor x pipeline parallel of its models on a GPU node, 0 on
    CPU (``gpu: false``)."""
    gpu: bool = False
    """Whether the replicas run vLLM's CUDA build (then each model's GPUs are reserved)."""
    graceful_shutdown_timeout_s: float | None = None
    """Seconds a stopping replica's requests get; unset: the server's drain_timeout."""


def replica_options(args: ServeArgs) -> dict[str, Any]:
    """The deployment options derived from the server's own limits (pure: unit-tested)."""
    settings = Settings(**args.settings)
    config_dir = settings.config or CONFIG_DIR
    configs = [load_model_config(name, config_dir) for name in settings.model_list()]
    admitted = sum(c.max_num_seqs + settings.max_waiting_requests for c in configs)
    running = sum(c.max_num_seqs for c in configs)
    gpus = args.num_gpus
    if gpus is None:
        gpus = (
            float(sum(c.tensor_parallel_size * c.pipeline_parallel_size for c in configs))
            if args.gpu
            else 0.0
        )
    return {
        "max_ongoing_requests": admitted,
        "autoscaling_config": {
            "min_replicas": args.min_replicas,
            "initial_replicas": max(args.min_replicas, 1),
            "max_replicas": max(args.max_replicas, args.min_replicas, 1),
            "target_ongoing_requests": running,
        },
        "ray_actor_options": {"num_cpus": args.num_cpus, "num_gpus": gpus},
        "graceful_shutdown_timeout_s": (
            args.graceful_shutdown_timeout_s
            if args.graceful_shutdown_timeout_s is not None
            else settings.drain_timeout
        ),
    }


class ReplicaHeader:
    """Adds ``x-replica-id`` to every response (streams too: only the start message).

    Ray Serve's proxy gives every request an ``x-request-id`` (the client's, or one of its own)
    and appends it to the response: the gate's copy of that same id is dropped here, so a
    client sees the header once, as it does without the proxy."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.replica = replica.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        proxy_id = dict(scope.get("headers", [])).get(REQUEST_ID_HEADER)

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if not (name.lower() == REQUEST_ID_HEADER and value == proxy_id)
                ]
                headers.append((REPLICA_HEADER, self.replica))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


class Replica:
    """One replica: the server's app, its engine started by the app's lifespan."""

    def __init__(self, settings: dict[str, Any]) -> None:
        prepare_environment()
        self.settings = Settings(**settings)
        setup_logging(self.settings.log_level)
        # Imported here: the app imports vLLM, which must see prepare_environment's variables.
        from server.app import create_app

        self.server_app: FastAPI = create_app(lambda: load_service(self.settings), self.settings)
        replica = serve.get_replica_context().replica_id.unique_id
        self.server_app.add_middleware(ReplicaHeader, replica=replica)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.server_app

    def check_health(self) -> None:
        """Ray Serve's health check: raising marks the replica unhealthy, to be replaced."""
        from server.http.routes import health_problem

        if not hasattr(self.server_app.state, "service"):
            return  # still starting: Serve waits for the lifespan before it asks
        problem = health_problem(self.server_app)
        if problem is not None:
            raise RuntimeError(problem.message)


LlamaServe: Deployment = serve.deployment(
    name="llama-serve", health_check_period_s=5, health_check_timeout_s=30
)(serve.ingress()(Replica))


def build(args: dict[str, Any]) -> Application:
    """The application builder that a Serve config's ``import_path`` names."""
    parsed = ServeArgs(**args)
    return LlamaServe.options(**replica_options(parsed)).bind(parsed.settings)
