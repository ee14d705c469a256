"""What a ``time_info`` (Cerebras's timing field) must hold when the engine measured the
request: the checks the end-to-end tests share.

``server/common/outputs.time_info`` falls back to zeros when the engine reports no timestamps, so
"the field is there" proves nothing; these checks fail on that fallback.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["CLOCK_EPSILON", "assert_measured_time_info"]

FIELDS = {"queue_time", "prompt_time", "completion_time", "total_time", "created"}
CLOCK_EPSILON = 0.005
"""Seconds. The engine's phases are stamped on the monotonic clock (in the engine core process),
``total_time`` and ``created`` on the wall clock (in the API process): the two can disagree by
a clock reading's resolution and NTP's slew (at most 500 ppm, 0.5 ms per second measured). The
requests checked here last seconds at most."""


def assert_measured_time_info(
    info: Any,
    *,
    completion_tokens: int,
    sent_at: float,
    received_at: float,
    created: int | None = None,
) -> None:
    """``info`` (a dict, or an object with the same attributes) is a real measurement of a
    request sent at wall-clock ``sent_at`` whose answer was read by ``received_at``:

    - every phase is a finite number; the prefill (``prompt_time``) and the whole request
      (``total_time``) took time; so did decoding (``completion_time``) when more than one
      token was generated (it spans the first token to the last);
    - the phases fit in the total: ``queue + prompt + completion <= total``;
    - ``total_time`` is no longer than the client's own wait;
    - ``created`` is the request's arrival: between sending and receiving, and within a second
      of the response's own ``created`` (whole seconds).
    """
    values = info if isinstance(info, dict) else {k: getattr(info, k) for k in FIELDS}
    assert set(values) == FIELDS, values
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in values.values()), values
    queue, prompt = values["queue_time"], values["prompt_time"]
    completion, total = values["completion_time"], values["total_time"]
    assert queue >= 0, values
    assert prompt > 0, f"no prefill time measured (the zeros fallback?): {values}"
    assert total > 0, values
    if completion_tokens >= 2:
        assert completion > 0, f"{completion_tokens} tokens took no time: {values}"
    else:
        assert completion >= 0, values
    assert queue + prompt + completion <= total + CLOCK_EPSILON, values
    assert sent_at - CLOCK_EPSILON <= values["created"] <= received_at + CLOCK_EPSILON, (
        sent_at,
        values,
        received_at,
    )
    # Whether total_time starts at the request's arrival or when it was parsed, it lies within
    # what the client saw.
    assert total <= received_at - sent_at + CLOCK_EPSILON, (sent_at, values, received_at)
    if created is not None:
        # The same moment in whole seconds (within one: the two may be stamped a moment apart).
        assert abs(values["created"] - created) <= 1, (created, values)
