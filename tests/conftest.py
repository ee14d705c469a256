"""Session-wide servers: each model's engine starts once and serves every e2e module."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import ExitStack

import openai
import pytest
from cerebras.cloud.sdk import Cerebras

# --soak-requests and the other sizes of the reliability tests:
from tests.support.closing import Closing, closing_on
from tests.support.reliability_options import pytest_addoption, pytest_configure  # noqa: F401
from tests.support.serverproc import ServerProcess, start_server
from tests.support.stalls import StallWatch


def _server(tmp_path_factory: pytest.TempPathFactory, *args: str) -> Iterator[ServerProcess]:
    server = start_server(*args, log_dir=tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


LOG_TAIL_LINES = 25
ENGINE_STATS = '"logger": "vllm.v1.metrics.loggers"'
STALLS = StallWatch()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Collection imported torch, vLLM and the SDKs, about a million objects that live as long
    as the run. Frozen, they are not walked by each full collection, which stopped every client
    thread of a test for most of a second: a pause an e2e test would take for the server's."""
    gc.collect()
    gc.freeze()
    STALLS.start()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every stretch of seconds in which the test process did not run (tests/support/stalls.py):
    what an e2e test that failed on timing went through."""
    terminalreporter.section("test-process stalls")
    terminalreporter.write_line(f"{len(STALLS.stalls)} over 2 s")
    for stall in STALLS.stalls:
        terminalreporter.write_line(str(stall))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """A failed test shows its stalls and the end of its servers' logs: CI keeps nothing
    else, and shows only the first lines of a failure."""
    report = yield
    if report.failed:
        stalls = [str(s) for s in STALLS.stalls if s.test.startswith(f"{item.nodeid} ")]
        report.sections.append(
            ("test-process stalls over 2 s in this test", "\n".join(stalls) or "none")
        )
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, ServerProcess):
                report.sections.append(
                    (f"server log, last lines ({value.log_path.name})", _log_tail(value))
                )
    return report


def _log_tail(server: ServerProcess) -> str:
    """The last lines of ``server``'s log but vLLM's stats, every 10 s, which would fill it,
    then the last of those."""
    lines = server.log().splitlines()
    stats = [line for line in lines if ENGINE_STATS in line]
    tail = [line for line in lines if ENGINE_STATS not in line][-LOG_TAIL_LINES:]
    return "\n".join(line[:400] for line in tail + stats[-1:])


@pytest.fixture(scope="session")
def smol_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(tmp_path_factory, "--model", "smollm2-135m")


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Outlines needs seconds per schema on Llama's 128k vocabulary, more on a loaded 2-core
    # machine; the compile bound itself is tested on smollm2-135m.
    yield from _server(tmp_path_factory, "--model", "llama3.1-tiny", "--grammar-timeout", "60")


@pytest.fixture(scope="session")
def smol_outlines_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The same model on Outlines, the other backend CI runs the structured-output suites on;
    started only by the modules that are parametrized by backend (``backend_url``)."""
    yield from _server(
        tmp_path_factory, "--model", "smollm2-135m", "--structured-output-backend", "outlines"
    )


@pytest.fixture(scope="session")
def tiny_outlines_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(
        tmp_path_factory,
        "--model",
        "llama3.1-tiny",
        "--grammar-timeout",
        "60",
        "--structured-output-backend",
        "outlines",
    )


STRUCTURED_BACKENDS = ("guidance", "outlines")
"""The default backend and Outlines: the JSON-mode, schema and tool suites run on both."""


def backend_server(request: pytest.FixtureRequest, model: str, backend: str) -> ServerProcess:
    """The session's ``model`` (``smol`` or ``tiny``) server on ``backend``."""
    suffix = "" if backend == "guidance" else f"_{backend}"
    server: ServerProcess = request.getfixturevalue(f"{model}{suffix}_server")
    return server


def backend_url(request: pytest.FixtureRequest, model: str, backend: str) -> str:
    return backend_server(request, model, backend).base_url


@pytest.fixture(scope="session")
def smol_url(smol_server: ServerProcess) -> str:
    return smol_server.base_url


@pytest.fixture(scope="session")
def tiny_url(tiny_server: ServerProcess) -> str:
    return tiny_server.base_url


# The SDK clients of the embedded default; a module with a server of its own (or a plain
# httpx client) defines its own ``client``. Closed after the module: their pooled connections
# would otherwise be left to the garbage collector (a ResourceWarning in some later test).
@pytest.fixture(scope="module")
def client(smol_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{smol_url}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def cerebras(smol_url: str) -> Iterator[Cerebras]:
    with Cerebras(base_url=smol_url, api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def closing() -> Iterator[Closing]:
    with ExitStack() as stack:
        yield closing_on(stack)
