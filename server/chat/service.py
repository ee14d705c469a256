"""The chat completions service: a prepared request in, engine run, response or chunk stream
out."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from vllm import RequestOutput

from server.chat.preparation import Prepared, prepare
from server.chat.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    Delta,
    FinishReason,
    NamedToolChoice,
    ResponseMessage,
    ToolCallDelta,
)
from server.common.chunks import ChunkTemplate, Encoded, chat_content_choice
from server.common.outputs import ChoiceState, choice_logprobs, time_info, usage_of
from server.common.protocol import ChoiceLogprobs, TimeInfo, TokenLogprob, Usage
from server.errors import EngineFailedError, FailedGenerationError, InternalError
from server.models.pool import ModelPool

__all__ = ["ChatService", "new_request_id"]

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """A finished generation: its choices, token counts and timings."""

    choices: dict[int, ChoiceState]
    last: RequestOutput
    """The engine's last output: it holds the prompt's token counts and timestamps."""

    @property
    def usage(self) -> Usage:
        return usage_of(self.last, sum(c.num_tokens for c in self.choices.values()))

    def timing(self, arrival: float) -> TimeInfo:
        return time_info(self.last.metrics, arrival)


class ChatService:
    def __init__(self, pool: ModelPool, *, grammar_backend: str) -> None:
        self.pool = pool
        self.grammar_backend = grammar_backend

    async def prepare(
        self, request: ChatCompletionRequest, request_id: str, arrival: float
    ) -> Prepared:
        return await prepare(
            request,
            request_id,
            arrival=arrival,
            pool=self.pool,
            grammar_backend=self.grammar_backend,
        )

    async def warm_up(self) -> None:
        """Make JSON mode as fast for the first request as for the next: one JSON-mode
        request per model, one token, through the whole path (preparation, the grammar check,
        the engine, whose structured-output backend builds its view of the vocabulary, seconds
        on Llama's 128k tokens, and JSON mode's grammar on first use). Before /health is 200."""
        for model in self.pool:
            await model.warm_up()
            request = ChatCompletionRequest.model_validate(
                {
                    "model": model.id,
                    "messages": [{"role": "user", "content": "JSON"}],
                    "max_tokens": 1,
                    "temperature": 0,
                    "response_format": {"type": "json_object"},
                }
            )
            prep = await self.prepare(request, f"warmup-{uuid.uuid4().hex}", time.time())
            try:
                await self.complete(prep)
            except FailedGenerationError:
                pass  # one token is no object
            except EngineFailedError as exc:
                # The engine could not build JSON mode's grammar: each JSON-mode request will
                # get the same 500 engine_error; everything else is served.
                log.warning(
                    "JSON mode warm-up failed", extra={"model": model.id, "error": str(exc)}
                )

    # ------------------------------------------------------------ generation

    async def _run(
        self, prep: Prepared
    ) -> AsyncIterator[tuple[ChoiceState, str, list[TokenLogprob], RequestOutput]]:
        """Engine deltas per choice: (state, new text, new logprobs, request output)."""
        states: dict[int, ChoiceState] = {}
        top = prep.request.num_logprobs
        engine = prep.model.engine
        tokenizer, tier = engine.tokenizer, prep.request.tier_used
        async for out in engine.generate(prep.prompt_ids, prep.params, prep.request_id, tier=tier):
            for output in out.outputs:
                state = states.setdefault(output.index, ChoiceState(output.index))
                text, logprobs = state.add(output, top, tokenizer)
                yield state, text, logprobs, out

    async def complete(self, prep: Prepared) -> ChatCompletionResponse:
        states: dict[int, ChoiceState] = {}
        last = None
        async for state, _, _, out in self._run(prep):
            states[state.index] = state
            last = out
        if last is None:
            raise InternalError("The engine returned no output.")
        outcome = Outcome(states, last)
        choices = [self._final_choice(prep, states[i]) for i in sorted(states)]
        return ChatCompletionResponse(
            **prep.envelope,
            choices=choices,
            usage=outcome.usage,
            time_info=outcome.timing(prep.arrival),
        )

    def _final_choice(self, prep: Prepared, state: ChoiceState) -> Choice:
        self._check_json(prep, state)
        message = ResponseMessage(content=state.text)
        finish: FinishReason = state.finish_reason or "stop"
        if prep.wants_tools:
            parsed = None
            if finish != "length":  # a call cut off is never returned as a call
                parsed = prep.model.chat_format.tool_calls.parse(
                    state.text,
                    prep.request.tools or [],
                    parallel=prep.request.parallel_tool_calls is not False,
                )
            if parsed is not None and parsed.calls:
                message = ResponseMessage(content=parsed.content, tool_calls=parsed.calls)
                named = isinstance(prep.request.effective_tool_choice, NamedToolChoice)
                finish = "stop" if named else "tool_calls"
            else:
                self._check_uncalled(prep, state)
        return Choice(
            index=state.index,
            message=message,
            finish_reason=finish,
            logprobs=choice_logprobs(state, bool(prep.request.logprobs)),
        )

    @staticmethod
    def _check_json(prep: Prepared, state: ChoiceState) -> None:
        """Cerebras's promise: JSON mode answers are valid JSON or a failed_generation 400."""
        constraint = prep.constraint
        if constraint is None or constraint.kind not in ("json_object", "json_schema"):
            return
        _raise_if_invalid(constraint.validate(state.text), state, "response_format")

    @staticmethod
    def _check_uncalled(prep: Prepared, state: ChoiceState) -> None:
        """An answer with tools that holds no call: a 400 with failed_generation when a call
        was demanded (required, named), or when JSON content was (response_format with auto),
        unless it is that JSON, complete. Free text under auto is any text."""
        constraint = prep.constraint
        if constraint is None:
            return
        if constraint.kind == "tool_call":
            problem = (
                "the tool call reached max_tokens"
                if state.finish_reason == "length"
                else "it is not a valid call to the tools"
            )
            _raise_if_invalid(problem, state, "tools", what="a complete, valid tool call")
        elif constraint.kind == "tool_auto" and constraint.schema is not None:
            _raise_if_invalid(constraint.validate(state.text), state, "response_format")

    # ------------------------------------------------------------ streaming

    async def stream(self, prep: Prepared) -> AsyncGenerator[Encoded, None]:
        """``chat.completion.chunk`` objects, serialized; an error mid-stream is raised (the
        caller turns it into an error event)."""
        request = prep.request
        syntax = prep.model.chat_format.tool_calls
        n = request.n or 1
        held: dict[int, list[str]] = {i: [] for i in range(n)}  # may still become a call
        holding = dict.fromkeys(range(n), prep.wants_tools)
        settled = dict.fromkeys(range(n), False)  # held text that begins a call: keep holding
        states: dict[int, ChoiceState] = {}
        last = None
        template = ChunkTemplate(ChatCompletionChunk, prep.envelope)
        for i in range(n):
            yield template.of([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
        async for state, text, logprobs, out in self._run(prep):
            states[state.index] = state
            last = out
            i = state.index
            if holding[i]:
                held[i].append(text)
                if settled[i]:
                    continue
                verdict = syntax.prefix_verdict("".join(held[i]))
                if verdict is not None:
                    settled[i] = verdict
                    continue
                holding[i], text, held[i] = False, "".join(held[i]), []
            if text or logprobs:
                lp = ChoiceLogprobs(content=logprobs) if request.logprobs else None
                yield template.encode(chat_content_choice(i, text, lp))
        if last is None:
            raise InternalError("The engine returned no output.")
        outcome = Outcome(states, last)
        finals = []
        for i in sorted(states):
            rest = "".join(held[i]) if holding[i] else ""
            finals.append(self._final_chunk_choice(prep, states[i], rest))
        include_usage = request.include_usage
        # The final chunk carries finish_reason and time_info, and usage as Cerebras sends it;
        # when the client asks for OpenAI's usage chunk, usage goes there only: clients that
        # add up the usage of every chunk (LangChain) would count it twice.
        usage = None if include_usage else outcome.usage
        yield template.of(finals, usage=usage, time_info=outcome.timing(prep.arrival))
        if include_usage:
            yield template.of([], usage=outcome.usage)

    def _final_chunk_choice(self, prep: Prepared, state: ChoiceState, held: str) -> ChunkChoice:
        finish: FinishReason = state.finish_reason or "stop"
        delta = Delta()
        if held:
            choice = self._final_choice(prep, state)
            calls = choice.message.tool_calls
            if calls:
                delta.tool_calls = [
                    ToolCallDelta(index=k, id=c.id, function=c.function)
                    for k, c in enumerate(calls)
                ]
                delta.content = choice.message.content
            else:
                delta.content = held
            finish = choice.finish_reason or finish
        return ChunkChoice(index=state.index, delta=delta, finish_reason=finish)


def _raise_if_invalid(
    problem: str | None,
    state: ChoiceState,
    param: str,
    *,
    what: str = "valid JSON for the requested format",
) -> None:
    if state.finish_reason == "length":
        problem = problem or "the output reached max_tokens"
    if problem:
        raise FailedGenerationError(
            f"The model's output is not {what}: {problem}. "
            "See failed_generation; retry with more max_tokens or clearer instructions.",
            failed_generation=state.text,
            param=param,
        )


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
