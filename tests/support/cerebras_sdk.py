"""The cerebras-cloud-sdk's error for a call, checked against OpenAI's published schemas."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cerebras.cloud.sdk import APIStatusError, Stream

from tests.support.openai_schema import assert_conforms

__all__ = ["raised"]


def raised(call: Callable[[], Any]) -> APIStatusError:
    """The SDK's error for ``call``. The SDK keeps the inner ``error`` object as ``body``: it
    must be OpenAI's ``Error``, and a response's whole body its ``ErrorResponse`` (a stream's
    error event is checked whole in tests/e2e/test_openapi_conformance.py)."""
    with pytest.raises(APIStatusError) as info:
        result = call()
        if isinstance(result, Stream):  # an error event raises while the stream is read
            list(result)
    error = info.value
    assert_conforms(error.body, "Error")
    if not error.response.headers["content-type"].startswith("text/event-stream"):
        assert_conforms(error.response.json(), "ErrorResponse")
    return error
