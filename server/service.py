"""The chat completions service: request in, engine run, response or chunk stream out."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from server.chat_formats import Segment, encode_segments
from server.errors import APIError, BadRequestError, FailedGenerationError, InternalError
from server.model_pool import ModelPool, ServedModel
from server.outputs import ChoiceState, choice_logprobs, time_info
from server.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    Delta,
    NamedToolChoice,
    ResponseMessage,
    TimeInfo,
    ToolCallDelta,
    Usage,
)
from server.tool_calls import could_be_call_prefix, parse_tool_calls

__all__ = ["ChatService", "Prepared"]

log = logging.getLogger(__name__)

INLINE_PROMPT_CHARS = 4096
"""Prompts of up to this many characters are tokenized on the event loop (about a millisecond);
longer ones in a thread. The tokenizer releases the GIL, and Llama 3.1's context holds prompts
of 100k tokens that take 0.2 s or more: on the loop they would stall every stream."""

# Two threads: a long prompt does not hold up the next one; each thread borrows its own copy
# of the tokenizer from vLLM's pool, so more threads would mean more copies in memory.
_tokenizing = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenize")


async def tokenize(segments: list[Segment], tokenizer: Any) -> list[int]:
    """``encode_segments`` that keeps the event loop free for long prompts."""
    if sum(len(s.text) for s in segments) <= INLINE_PROMPT_CHARS:
        return encode_segments(segments, tokenizer)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_tokenizing, encode_segments, segments, tokenizer)


@dataclass
class Prepared:
    """A validated request, ready for the engine."""

    request: ChatCompletionRequest
    model: ServedModel
    request_id: str
    prompt_ids: list[int]
    params: Any
    constraint: Any = None
    arrival: float = field(default_factory=time.time)

    @property
    def fingerprint(self) -> str:
        return f"fp_{self.model.id}"

    @property
    def wants_tools(self) -> bool:
        return bool(self.request.tools) and self.request.effective_tool_choice != "none"


@dataclass
class Outcome:
    """A finished generation: its choices, token counts and timings."""

    choices: dict[int, ChoiceState]
    prompt_tokens: int
    timing: TimeInfo

    @property
    def usage(self) -> Usage:
        completion = sum(c.num_tokens for c in self.choices.values())
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
        )


class ChatService:
    def __init__(self, pool: ModelPool, *, grammar_backend: str) -> None:
        self.pool = pool
        self.grammar_backend = grammar_backend

    # ------------------------------------------------------------ preparation

    async def prepare(self, request: ChatCompletionRequest, request_id: str) -> Prepared:
        from sampling import to_sampling_params

        model = self.pool.get(request.model)
        self._check_conversation(request)
        self._check_prompt_size(request, model)
        constraint = await self._constraint(request, model)
        tools = request.tools if request.effective_tool_choice != "none" else None
        segments = model.chat_format.render(request.messages, tools)
        prompt_ids = await tokenize(segments, model.engine.tokenizer)
        max_tokens = self._max_tokens(request, model, len(prompt_ids))
        self._check_engine_limits(request, model, max_tokens)
        params = to_sampling_params(
            request,
            max_tokens=max_tokens,
            stop_token_ids=model.stop_token_ids,
            structured_outputs=constraint.structured_outputs if constraint else None,
        )
        return Prepared(request, model, request_id, prompt_ids, params, constraint)

    @staticmethod
    def _check_conversation(request: ChatCompletionRequest) -> None:
        last = request.messages[-1]
        if last.role == "assistant":
            raise BadRequestError(
                "The last message must not be an assistant message: "
                "continuing an assistant turn is not supported.",
                param="messages",
            )

    @staticmethod
    def _check_prompt_size(request: ChatCompletionRequest, model: ServedModel) -> None:
        """Refuse a prompt that cannot fit before tokenizing it: megabytes of text would
        occupy a tokenizing thread (and a core) for seconds."""
        size = sum(
            len(m.text.encode()) + sum(len(c.function.arguments) for c in m.tool_calls or [])
            for m in request.messages
        )
        limit = model.config.context_length * model.longest_token_bytes
        if size > limit:
            raise BadRequestError(
                f"The messages hold {size} bytes of text, more than any prompt that fits the "
                f"model's context of {model.config.context_length} tokens can hold.",
                param="messages",
                code="context_length_exceeded",
            )

    async def _constraint(self, request: ChatCompletionRequest, model: ServedModel) -> Any:
        from grammars import build_constraint

        if request.stream and request.response_format and request.response_format.type != "text":
            raise BadRequestError(
                "JSON mode (response_format) is not compatible with stream: set stream to false.",
                param="stream",
                code="unsupported_parameter",
            )
        constraint = build_constraint(request, backend=self.grammar_backend)
        if constraint is not None and model.grammar is not None:
            await model.grammar.check(constraint)
        return constraint

    @staticmethod
    def _max_tokens(request: ChatCompletionRequest, model: ServedModel, prompt_len: int) -> int:
        context = model.config.context_length
        room = context - prompt_len
        if room < 1:
            raise BadRequestError(
                f"The prompt is {prompt_len} tokens, which leaves no room in the model's "
                f"context of {context} tokens.",
                param="messages",
                code="context_length_exceeded",
            )
        wanted = request.completion_limit
        if wanted is None:
            return room
        if wanted > room:
            name = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
            raise BadRequestError(
                f"{name} is {wanted}, but the prompt is {prompt_len} tokens and the model's "
                f"context is {context}: at most {room} tokens can be generated.",
                param=name,
                code="context_length_exceeded",
            )
        return wanted

    @staticmethod
    def _check_engine_limits(
        request: ChatCompletionRequest, model: ServedModel, max_tokens: int
    ) -> None:
        """What only the model knows (vocabulary, room left): vLLM would refuse these with an
        exception that is not the client's error envelope."""
        vocab = len(model.engine.tokenizer)
        outside = [k for k in request.logit_bias or {} if int(k) >= vocab]
        if outside:
            raise BadRequestError(
                f"logit_bias names token ids outside the vocabulary of {vocab} tokens: "
                f"{', '.join(outside[:5])}.",
                param="logit_bias",
            )
        if (request.min_tokens or 0) > max_tokens:
            raise BadRequestError(
                f"min_tokens is {request.min_tokens}, more than the {max_tokens} tokens "
                "that may be generated (max_tokens or the rest of the context).",
                param="min_tokens",
            )
        if request.temperature == 0 and (request.n or 1) > 1:
            raise BadRequestError(
                "n must be 1 with temperature 0: greedy decoding gives one answer.",
                param="n",
            )

    # ------------------------------------------------------------ generation

    async def _run(self, prep: Prepared) -> AsyncIterator[tuple[ChoiceState, str, list, Any]]:
        """Engine deltas per choice: (state, new text, new logprobs, request output)."""
        states: dict[int, ChoiceState] = {}
        top = prep.request.top_logprobs or 0 if prep.request.logprobs else None
        tokenizer = prep.model.engine.tokenizer
        async for out in prep.model.engine.generate(prep.prompt_ids, prep.params, prep.request_id):
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
        outcome = Outcome(states, len(prep.prompt_ids), time_info(last.metrics, prep.arrival))
        choices = [self._final_choice(prep, states[i]) for i in sorted(states)]
        return ChatCompletionResponse(
            id=prep.request_id,
            created=int(prep.arrival),
            model=prep.model.id,
            system_fingerprint=prep.fingerprint,
            choices=choices,
            usage=outcome.usage,
            time_info=outcome.timing,
        )

    def _final_choice(self, prep: Prepared, state: ChoiceState) -> Choice:
        self._check_json(prep, state)
        message = ResponseMessage(content=state.text)
        finish = state.finish_reason or "stop"
        if prep.wants_tools and finish != "length":
            parsed = parse_tool_calls(
                state.text,
                prep.request.tools or [],
                parallel=prep.request.parallel_tool_calls is not False,
            )
            if parsed.calls:
                message = ResponseMessage(content=parsed.content, tool_calls=parsed.calls)
                named = isinstance(prep.request.effective_tool_choice, NamedToolChoice)
                finish = "stop" if named else "tool_calls"
        return Choice(
            index=state.index,
            message=message,
            finish_reason=finish,  # type: ignore[arg-type]
            logprobs=choice_logprobs(state, bool(prep.request.logprobs)),
        )

    @staticmethod
    def _check_json(prep: Prepared, state: ChoiceState) -> None:
        """Cerebras's promise: JSON mode answers are valid JSON or a failed_generation 400."""
        constraint = prep.constraint
        if constraint is None or constraint.kind not in ("json_object", "json_schema"):
            return
        problem = constraint.validate(state.text)
        if state.finish_reason == "length":
            problem = problem or "the output reached max_tokens"
        if problem:
            raise FailedGenerationError(
                f"The model's output is not valid JSON for the requested format: {problem}. "
                "See failed_generation; retry with more max_tokens or clearer instructions.",
                failed_generation=state.text,
                param="response_format",
            )

    # ------------------------------------------------------------ streaming

    async def stream(self, prep: Prepared) -> AsyncIterator[str]:
        """``chat.completion.chunk`` events as JSON strings, then an error event if one
        happens mid-stream; the route adds ``[DONE]``."""
        try:
            async for chunk in self._chunks(prep):
                yield chunk.model_dump_json(exclude_none=True)
        except APIError as exc:
            yield json.dumps(exc.body())
        except Exception as exc:
            log.exception("stream failed", extra={"request_id": prep.request_id})
            yield json.dumps(InternalError(f"The stream failed: {type(exc).__name__}").body())

    async def _chunks(self, prep: Prepared) -> AsyncIterator[ChatCompletionChunk]:
        request = prep.request
        n = request.n or 1
        held = {i: "" for i in range(n)}  # text that may still become a tool call
        holding = dict.fromkeys(range(n), prep.wants_tools)
        states: dict[int, ChoiceState] = {}
        last = None
        for i in range(n):
            yield self._chunk(
                prep, [ChunkChoice(index=i, delta=Delta(role="assistant", content=""))]
            )
        async for state, text, logprobs, out in self._run(prep):
            states[state.index] = state
            last = out
            i = state.index
            if holding[i]:
                held[i] += text
                if could_be_call_prefix(held[i]):
                    continue
                holding[i], text, held[i] = False, held[i], ""
            if text or logprobs:
                lp = choice_logprobs(ChoiceState(i, logprobs=logprobs), bool(request.logprobs))
                yield self._chunk(
                    prep, [ChunkChoice(index=i, delta=Delta(content=text), logprobs=lp)]
                )
        if last is None:
            raise InternalError("The engine returned no output.")
        outcome = Outcome(states, len(prep.prompt_ids), time_info(last.metrics, prep.arrival))
        finals = []
        for i in sorted(states):
            finals.append(self._final_chunk_choice(prep, states[i], held[i] if holding[i] else ""))
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        # The final chunk carries finish_reason and time_info, and usage as Cerebras sends it;
        # when the client asks for OpenAI's usage chunk, usage goes there only: clients that
        # add up the usage of every chunk (LangChain) would count it twice.
        usage = None if include_usage else outcome.usage
        yield self._chunk(prep, finals, usage=usage, timing=outcome.timing)
        if include_usage:
            yield self._chunk(prep, [], usage=outcome.usage)

    def _final_chunk_choice(self, prep: Prepared, state: ChoiceState, held: str) -> ChunkChoice:
        finish = state.finish_reason or "stop"
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
        return ChunkChoice(index=state.index, delta=delta, finish_reason=finish)  # type: ignore[arg-type]

    @staticmethod
    def _chunk(
        prep: Prepared,
        choices: list[ChunkChoice],
        usage: Usage | None = None,
        timing: TimeInfo | None = None,
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=prep.request_id,
            created=int(prep.arrival),
            model=prep.model.id,
            system_fingerprint=prep.fingerprint,
            choices=choices,
            usage=usage,
            time_info=timing,
        )


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
