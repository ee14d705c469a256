"""Logging: one JSON object per line, with whatever ``extra`` fields the caller passes."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

__all__ = ["setup_logging"]

# Not fields of a line; uvicorn's color_message is its msg again, with terminal colours.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


_PROCESS: dict[str, object] = {}
"""Fields on every line of this process (which API process wrote it, with --api-processes);
module-wide, so vLLM's lines (its own formatter instance, server/vllm_logging.json) carry them."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        } | _PROCESS
        # Underscored attributes are other libraries' own (Ray stamps _ray_timestamp_ns on
        # every record once it is imported), not fields of ours.
        line |= {
            k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _unfinished_is_a_warning(record: logging.LogRecord) -> bool:
    """uvicorn calls a response the app did not finish an error; here only a stream whose
    client stopped reading ends that way, after its own warning (server.http.routes)."""
    if record.msg == "ASGI callable returned without completing response.":
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "connection closed with its response unfinished"
    return True


def setup_logging(level: str, api_process: int | None = None) -> None:
    """``api_process``: this process's index among several API processes, on every line
    (with its pid)."""
    if api_process is not None:
        _PROCESS.update(api_process=api_process, pid=os.getpid())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.captureWarnings(True)  # Python's warnings as lines of their own
    for name in ("server", "grammars", "uvicorn.error", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    logging.getLogger("uvicorn.error").addFilter(_unfinished_is_a_warning)
