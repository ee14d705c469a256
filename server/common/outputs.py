"""Engine outputs to wire objects: logprobs, usage, time_info, accumulated choices."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from vllm.logprobs import Logprob, SampleLogprobs
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.v1.metrics.stats import RequestStateStats

from server.common.protocol import (
    ChoiceLogprobs,
    PromptTokensDetails,
    TimeInfo,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from server.errors import EngineFailedError
from server.models.formats.base import TokenizerLike

__all__ = [
    "ENGINE_FAILURES",
    "ChoiceState",
    "convert_logprobs",
    "finite",
    "time_info",
    "token_text",
    "usage_of",
]

ENGINE_FAILURES = frozenset({"abort", "error"})
"""vLLM's finish reasons for a request the engine ended on its own (a grammar it could not
build, a shutdown): never an answer. (When the client leaves, the server aborts the request
and reads no more outputs.)"""


@dataclass
class ChoiceState:
    """What one choice has produced so far."""

    index: int
    num_tokens: int = 0
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    # The text's pieces, joined when read: ``text += piece`` on an attribute copies the whole
    # text every time (CPython extends a string in place only in a local variable), which
    # made a 32,000-token answer cost about 0.2 s of event loop.
    _pieces: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """All the text so far."""
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def add(
        self, output: CompletionOutput, top_logprobs: int | None, tokenizer: TokenizerLike
    ) -> tuple[str, list[TokenLogprob]]:
        """Fold one engine delta in; returns the new text and new logprob entries."""
        if output.finish_reason in ENGINE_FAILURES:
            raise EngineFailedError(
                f"The engine ended the request itself ({output.finish_reason}) before it "
                "finished; retry it.",
            )
        self._pieces.append(output.text)
        self.num_tokens += len(output.token_ids)
        if output.finish_reason is not None:
            self.finish_reason = "length" if output.finish_reason == "length" else "stop"
        new_logprobs: list[TokenLogprob] = []
        if top_logprobs is not None and output.logprobs:
            new_logprobs = convert_logprobs(
                output.token_ids, output.logprobs, top_logprobs, tokenizer
            )
            self.logprobs += new_logprobs
        return output.text, new_logprobs


def convert_logprobs(
    token_ids: Sequence[int], logprobs: SampleLogprobs, top_n: int, tokenizer: TokenizerLike
) -> list[TokenLogprob]:
    """vLLM's per-position ``{token_id: Logprob}`` maps to OpenAI's logprobs content."""
    entries = []
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        chosen = candidates[token_id]
        top = sorted(
            ((tid, lp) for tid, lp in candidates.items() if lp.rank is not None),
            key=lambda item: item[1].rank,
        )[:top_n]
        entries.append(
            TokenLogprob(
                **_entry(token_id, chosen, tokenizer),
                top_logprobs=[TopLogprob(**_entry(tid, lp, tokenizer)) for tid, lp in top],
            )
        )
    return entries


def _entry(token_id: int, logprob: Logprob, tokenizer: TokenizerLike) -> dict[str, Any]:
    token = token_text(token_id, logprob, tokenizer)
    return {
        "token": token,
        "logprob": finite(logprob.logprob),
        "bytes": list(token.encode("utf-8")),
    }


def token_text(token_id: int, logprob: Logprob | None, tokenizer: TokenizerLike) -> str:
    """The token as text: as the engine decoded it, else decoded here."""
    token = logprob.decoded_token if logprob is not None else None
    return tokenizer.decode([token_id]) if token is None else token


def finite(logprob: float) -> float:
    """-inf (a token the sampler ruled out) as -9999.0: -inf is not JSON."""
    return max(logprob, -9999.0)


def choice_logprobs(state: ChoiceState, wanted: bool) -> ChoiceLogprobs | None:
    return ChoiceLogprobs(content=state.logprobs) if wanted else None


def usage_of(output: RequestOutput, completion_tokens: int) -> Usage:
    """``usage`` of a request from the engine's output (any of its outputs: the counts of the
    prompt are set from its first) and the tokens generated for all its choices.

    ``cached_tokens`` is the engine's own count of prompt tokens its prefix cache held (whole
    KV blocks, never the prompt's last token, which is always computed).
    """
    prompt = len(output.prompt_token_ids or ())
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion_tokens,
        total_tokens=prompt + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=output.num_cached_tokens or 0),
    )


def time_info(metrics: RequestStateStats | None, arrival_wall: float) -> TimeInfo:
    """Cerebras's ``time_info`` from the engine's own request timestamps.

    The engine core stamps queueing, scheduling and tokens on the monotonic clock; the
    front end stamps arrival on the wall clock. ``total_time`` spans arrival to now.
    """
    total = time.time() - arrival_wall
    if metrics is None or not metrics.scheduled_ts:
        return TimeInfo(
            queue_time=0.0,
            prompt_time=0.0,
            completion_time=0.0,
            total_time=total,
            created=arrival_wall,
        )
    queue = max(metrics.scheduled_ts - metrics.queued_ts, 0.0)
    first = metrics.first_token_ts or metrics.scheduled_ts
    prompt = max(first - metrics.scheduled_ts, 0.0)
    completion = max((metrics.last_token_ts or first) - first, 0.0)
    return TimeInfo(
        queue_time=queue,
        prompt_time=prompt,
        completion_time=completion,
        total_time=total,
        created=arrival_wall,
    )
