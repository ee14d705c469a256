"""Session-wide servers: each model's engine starts once and serves every e2e module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serverproc import ServerProcess, start_server


def _server(tmp_path_factory: pytest.TempPathFactory, *args: str) -> Iterator[ServerProcess]:
    server = start_server(*args, log_dir=tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "--model", "smollm2-135m")


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "--model", "llama3.1-tiny")


@pytest.fixture(scope="session")
def smol_url(smol_server: ServerProcess) -> str:
    return smol_server.base_url


@pytest.fixture(scope="session")
def tiny_url(tiny_server: ServerProcess) -> str:
    return tiny_server.base_url
