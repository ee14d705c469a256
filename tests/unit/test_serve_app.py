"""The Ray Serve application's config file is one Serve accepts, and each replica's options
follow from the server's own limits (tests/e2e/test_ray.py runs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from server.serve_app import ServeArgs, replica_options

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = ROOT / "configs" / "serve" / "ray-serve.yaml"


def _app_args() -> ServeArgs:
    (app,) = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    return ServeArgs(**app["args"])


def test_the_config_file_is_a_serve_deploy_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema(**yaml.safe_load(SERVE_CONFIG.read_text()))
    (app,) = schema.applications
    assert app.import_path == "server.serve_app:build"
    assert app.route_prefix == "/"
    # The replica options come from the builder (below), never from overrides here.
    assert not app.deployments


def test_a_replica_admits_what_the_server_admits() -> None:
    options = replica_options(_app_args())
    # smollm2-135m: max_num_seqs 64, plus max_waiting_requests 256.
    assert options["max_ongoing_requests"] == 64 + 256
    assert options["autoscaling_config"] == {
        "min_replicas": 2,
        "initial_replicas": 2,
        "max_replicas": 4,
        "target_ongoing_requests": 64,
    }
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0.0}
    assert options["graceful_shutdown_timeout_s"] == 30.0  # the server's drain_timeout


def test_a_gpu_replica_reserves_its_models_gpus() -> None:
    args = ServeArgs(
        gpu=True,
        settings={"model": ["llama3.1-70b-fp8-2xh100"], "max_waiting_requests": 10},
        min_replicas=0,
        max_replicas=3,
        graceful_shutdown_timeout_s=5,
    )
    options = replica_options(args)
    assert options["ray_actor_options"]["num_gpus"] == 2.0  # tensor parallel 2
    assert options["max_ongoing_requests"] == 128 + 10
    assert options["autoscaling_config"]["initial_replicas"] == 1
    assert options["graceful_shutdown_timeout_s"] == 5


def test_unknown_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="replicas"):
        ServeArgs(replicas=2)  # type: ignore[call-arg]


def test_the_replica_header_is_added_and_the_proxys_request_id_not_doubled() -> None:
    import asyncio

    from server.serve_app import ReplicaHeader

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"x-request-id", b"from-proxy"), (b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"x-request-id", b"from-proxy")]}
    asyncio.run(ReplicaHeader(app, replica="r1")(scope, None, send))  # type: ignore[arg-type]
    start, body = sent
    assert start["headers"] == [(b"content-type", b"text/plain"), (b"x-replica-id", b"r1")]
    assert body["body"] == b"ok"  # the body (a stream's events) passes untouched
