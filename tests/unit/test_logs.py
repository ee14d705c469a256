"""Log lines: one JSON object each, uvicorn's too, with the caller's extra fields."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from server.logs import JsonFormatter, setup_logging

NAMES = ("server", "grammars", "uvicorn.error")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = {n: (logging.getLogger(n).handlers, logging.getLogger(n).filters) for n in NAMES}
    yield
    for name, (handlers, filters) in saved.items():
        logging.getLogger(name).handlers, logging.getLogger(name).filters = handlers, filters


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_lines_are_json_with_extra_fields_and_the_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging("info")  # here, not in a fixture: capsys swaps stderr for each test phase
    log = logging.getLogger("server.test")
    log.info("ready", extra={"seconds": 1.5})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("unhandled error")
    ready, error = _lines(capsys)
    assert (ready["level"], ready["logger"], ready["msg"], ready["seconds"]) == (
        "info",
        "server.test",
        "ready",
        1.5,
    )
    assert error["level"] == "error" and "ValueError: boom" in error["exc"]


def test_uvicorns_unfinished_response_is_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn.error("ASGI callable returned without completing response.")
    uvicorn.error(
        "Exception in ASGI application", extra={"color_message": "\x1b[31mException\x1b[0m"}
    )
    unfinished, crash = _lines(capsys)
    assert unfinished["level"] == "warning"
    assert unfinished["msg"] == "connection closed with its response unfinished"
    assert (crash["level"], crash["msg"]) == ("error", "Exception in ASGI application")
    assert "color_message" not in crash


def test_other_libraries_private_record_attributes_are_not_fields() -> None:
    # Ray, once imported, stamps _ray_timestamp_ns on every record of the process.
    record = logging.makeLogRecord({"msg": "ready", "_ray_timestamp_ns": 1, "n": 2})
    line = json.loads(JsonFormatter().format(record))
    assert "_ray_timestamp_ns" not in line
    assert (line["msg"], line["n"]) == ("ready", 2)
