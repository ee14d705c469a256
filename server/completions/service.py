"""The text completions service: a prepared request in, one engine request per prompt, a
``text_completion`` answer or a stream of ``text_completion`` chunks out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

from vllm import RequestOutput
from vllm.outputs import CompletionOutput

from server.common.chunks import ChunkTemplate, Encoded, completion_text_choice
from server.common.outputs import ChoiceState, time_info
from server.common.protocol import PromptTokensDetails, Usage
from server.completions.logprobs import legacy_logprobs
from server.completions.preparation import PreparedCompletion, prepare_completion
from server.completions.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from server.errors import InternalError
from server.models.pool import ModelPool

__all__ = ["CompletionService", "merge", "new_completion_id"]

T = TypeVar("T")


@dataclass
class _Choice:
    """One choice so far: its engine state and what the legacy format sends of it."""

    state: ChoiceState
    offset: int
    """Where the next token's text starts in the prompt followed by the completion."""
    echo: str = ""
    """The prompt, when echo is set: the answer's text is it followed by the state's."""
    logprobs: CompletionLogprobs | None = None
    tokens: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    """The engine's count of its prompt's tokens that the prefix cache held."""


@dataclass
class _Delta:
    """What one engine output adds to a choice."""

    choice: _Choice
    text: str
    logprobs: CompletionLogprobs | None
    tokens: list[int] | None


class CompletionService:
    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    async def prepare(
        self, request: CompletionRequest, request_id: str, arrival: float
    ) -> PreparedCompletion:
        return await prepare_completion(request, request_id, arrival=arrival, pool=self.pool)

    async def complete(self, prep: PreparedCompletion) -> CompletionResponse:
        choices: dict[int, _Choice] = {}
        last = None
        async for _, out in self._run(prep, choices):
            last = out
        if last is None:
            raise InternalError("The engine returned no output.")
        return CompletionResponse(
            **prep.envelope,
            choices=[_final(prep, choices[i], full=True) for i in sorted(choices)],
            usage=_usage(prep, choices),
            time_info=time_info(last.metrics, prep.arrival),
        )

    async def stream(self, prep: PreparedCompletion) -> AsyncGenerator[Encoded, None]:
        """``text_completion`` chunks, serialized: text (the echoed prompt first) and logprobs
        as they come, then one chunk with every choice's finish_reason, usage and time_info
        (usage on a chunk of its own with ``stream_options.include_usage``, as chat); an
        error mid-stream is raised (the caller turns it into an error event)."""
        choices: dict[int, _Choice] = {}
        last = None
        template = ChunkTemplate(CompletionResponse, prep.envelope)
        async for delta, out in self._run(prep, choices):
            last = out
            if delta.text or delta.logprobs is not None or delta.tokens:
                index = delta.choice.state.index
                choice = completion_text_choice(index, delta.text, delta.logprobs, delta.tokens)
                yield template.encode(choice)
        if last is None:
            raise InternalError("The engine returned no output.")
        usage = _usage(prep, choices)
        include_usage = prep.request.include_usage
        yield template.of(
            [_final(prep, choices[i], full=False) for i in sorted(choices)],
            usage=None if include_usage else usage,
            time_info=time_info(last.metrics, prep.arrival),
        )
        if include_usage:
            yield template.of([], usage=usage)

    async def _run(
        self, prep: PreparedCompletion, choices: dict[int, _Choice]
    ) -> AsyncIterator[tuple[_Delta, RequestOutput]]:
        """Engine deltas per choice, ``choices`` kept up to date. A choice's first delta
        starts with the echoed prompt (and its logprobs)."""
        request, tokenizer = prep.request, prep.model.engine.tokenizer
        n = request.n or 1
        runs = [
            prep.model.engine.generate(
                p.ids, prep.params, f"{prep.request_id}-{k}", tier=request.tier_used
            )
            for k, p in enumerate(prep.prompts)
        ]
        echoed: dict[int, CompletionLogprobs | None] = {}
        async for k, out in merge(runs):
            if k not in echoed:
                echoed[k] = _echo_logprobs(prep, k, out)
            for output in out.outputs:
                index = k * n + output.index
                text, logprobs = "", None
                choice = choices.get(index)
                if choice is None:
                    choice = choices[index] = _start(prep, k, index)
                    if request.echo:
                        text = choice.echo
                        echo = echoed[k]
                        logprobs = echo.model_copy(deep=True) if echo else None
                choice.cached_tokens = out.num_cached_tokens or 0
                new_text, _ = choice.state.add(output, None, tokenizer)
                text += new_text
                new_logprobs = _logprobs(prep, choice, output)
                if logprobs is None:
                    logprobs = new_logprobs
                elif new_logprobs is not None:
                    logprobs.extend(new_logprobs)
                if choice.logprobs is not None and logprobs is not None:
                    choice.logprobs.extend(logprobs)
                tokens = list(output.token_ids) if request.return_raw_tokens else None
                choice.tokens += tokens or []
                yield _Delta(choice, text, logprobs, tokens), out


def _start(prep: PreparedCompletion, k: int, index: int) -> _Choice:
    wanted = prep.request.logprobs is not None
    prompt = prep.prompts[k].text
    return _Choice(
        ChoiceState(index),
        offset=len(prompt),
        echo=prompt if prep.request.echo else "",
        logprobs=CompletionLogprobs() if wanted else None,
    )


def _echo_logprobs(
    prep: PreparedCompletion, k: int, out: RequestOutput
) -> CompletionLogprobs | None:
    """The prompt's tokens and logprobs (the first has none), when echo asks for them."""
    request = prep.request
    if not request.echo or request.logprobs is None:
        return None
    prompt = prep.prompts[k]
    given = list(out.prompt_logprobs or [])
    given += [None] * (len(prompt.ids) - len(given))
    return legacy_logprobs(prompt.ids, given, request.logprobs, prep.model.engine.tokenizer, 0)


def _logprobs(
    prep: PreparedCompletion, choice: _Choice, output: CompletionOutput
) -> CompletionLogprobs | None:
    """The new tokens' legacy logprobs; the choice's text offset moves past them."""
    top_n = prep.request.logprobs
    if top_n is None or not output.logprobs:
        return None
    tokenizer = prep.model.engine.tokenizer
    new = legacy_logprobs(output.token_ids, output.logprobs, top_n, tokenizer, choice.offset)
    choice.offset += sum(len(t) for t in new.tokens)
    return new


def _final(prep: PreparedCompletion, choice: _Choice, *, full: bool) -> CompletionChoice:
    """The finished choice: all of it (a plain answer), or only its finish_reason (a stream's
    last chunk)."""
    return CompletionChoice(
        index=choice.state.index,
        text=choice.echo + choice.state.text if full else "",
        logprobs=choice.logprobs if full else None,
        finish_reason=choice.state.finish_reason or "stop",
        tokens=choice.tokens if full and prep.request.return_raw_tokens else None,
    )


def _usage(prep: PreparedCompletion, choices: dict[int, _Choice]) -> Usage:
    """Each prompt counts once, whatever ``n``; each choice's generated tokens count."""
    prompt = sum(len(p.ids) for p in prep.prompts)
    completion = sum(c.state.num_tokens for c in choices.values())
    n = prep.request.n or 1
    cached = sum({i // n: c.cached_tokens for i, c in choices.items()}.values())
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


async def merge(streams: list[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """The items of ``streams`` as they come, each with its stream's index. The first error
    of any stream is raised; leaving early (or an error) cancels every stream still running,
    which closes it (an engine stream aborts its request)."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, T | _Done]] = asyncio.Queue()

    async def pump(k: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((k, item))
        except Exception as exc:
            queue.put_nowait((k, _Done(exc)))
        else:
            queue.put_nowait((k, _Done()))

    tasks = [asyncio.ensure_future(pump(k, s)) for k, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            k, entry = await queue.get()
            if not isinstance(entry, _Done):
                yield k, entry
            elif entry.error is not None:
                raise entry.error
            else:
                running -= 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class _Done:
    """A stream's end in ``merge``'s queue, with the error that ended it, if one did."""

    error: Exception | None = None


def new_completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"
