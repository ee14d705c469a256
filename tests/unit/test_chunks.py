"""The streams' fast chunk path sends exactly the bytes the pydantic models would."""

from __future__ import annotations

import json

import pytest
from sse_starlette.event import ServerSentEvent

from server.chat.protocol import (
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    FunctionCall,
    ToolCallDelta,
)
from server.common.chunks import ChunkTemplate, chat_content_choice, completion_text_choice
from server.common.protocol import (
    ChoiceLogprobs,
    PromptTokensDetails,
    TimeInfo,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from server.completions.protocol import CompletionChoice, CompletionLogprobs, CompletionResponse
from server.http.routes import line_safe

TEXTS = [
    "Hello",
    "",
    ' world, "quoted" and \\backslashed\\ / slashed',
    "line\nbreak\ttab\rreturn\b\f",
    "".join(chr(c) for c in range(0x20)) + "\x7f",
    "é 日本語 \u2028\u2029 😀 \ufeff",
    "</script><!-- & ' ",
]

ENVELOPES = [
    {
        "id": "chatcmpl-0123456789abcdef",
        "created": 1764444000,
        "model": "smollm2-135m",
        "system_fingerprint": "fp_smollm2-135m",
        "service_tier": None,
        "service_tier_used": None,
    },
    {
        "id": "chatcmpl-x",
        "created": 1,
        "model": 'odd "model" \\ é',
        "system_fingerprint": "fp_x",
        "service_tier": "auto",
        "service_tier_used": "default",
    },
    {
        "id": "chatcmpl-y",
        "created": 2,
        "model": "m",
        "system_fingerprint": "fp_m",
        "service_tier": "flex",
        "service_tier_used": None,
    },
]

LOGPROBS = [
    TokenLogprob(
        token=" Hi",
        logprob=-0.00001234,
        bytes=[32, 72, 105],
        top_logprobs=[
            TopLogprob(token=" Hi", logprob=-0.00001234, bytes=[32, 72, 105]),
            TopLogprob(token='"', logprob=-9999.0, bytes=[34]),
            TopLogprob(token="é", logprob=-2.3841855067985307e-07, bytes=[195, 169]),
        ],
    ),
    TokenLogprob(token="\n", logprob=-1.5, bytes=[10], top_logprobs=[]),
]

USAGE = Usage(
    prompt_tokens=140,
    completion_tokens=64,
    total_tokens=204,
    prompt_tokens_details=PromptTokensDetails(cached_tokens=128),
)
TIMING = TimeInfo(
    queue_time=0.00012, prompt_time=0.25, completion_time=3.0, total_time=3.5, created=1764444000.5
)


def chat_model_bytes(envelope: dict, choices: list[ChunkChoice], **fields: object) -> bytes:
    return ChatCompletionChunk(**envelope, choices=choices, **fields).model_dump_json().encode()


@pytest.mark.parametrize("envelope", ENVELOPES)
@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("index", [0, 3])
def test_chat_content_chunk_is_the_models_bytes(envelope: dict, text: str, index: int) -> None:
    template = ChunkTemplate(ChatCompletionChunk, envelope)
    fast = template.encode(chat_content_choice(index, text, None))
    expected = chat_model_bytes(envelope, [ChunkChoice(index=index, delta=Delta(content=text))])
    assert fast.data == expected
    assert fast.usage is None and fast.time_info is None


@pytest.mark.parametrize("envelope", ENVELOPES)
@pytest.mark.parametrize("content", [LOGPROBS, LOGPROBS[:1], []])
def test_chat_logprobs_chunk_is_the_models_bytes(envelope: dict, content: list) -> None:
    template = ChunkTemplate(ChatCompletionChunk, envelope)
    logprobs = ChoiceLogprobs(content=content)
    fast = template.encode(chat_content_choice(1, " Hi\n", logprobs))
    choice = ChunkChoice(index=1, delta=Delta(content=" Hi\n"), logprobs=logprobs)
    assert fast.data == chat_model_bytes(envelope, [choice])


@pytest.mark.parametrize("envelope", ENVELOPES)
def test_chat_rare_chunks_are_the_models_bytes(envelope: dict) -> None:
    """Role, tool calls, finish with usage and time_info, the usage-only chunk."""
    template = ChunkTemplate(ChatCompletionChunk, envelope)
    role = [ChunkChoice(index=0, delta=Delta(role="assistant", content=""))]
    call = ToolCallDelta(
        index=0, id="call_1", function=FunctionCall(name="get_weather", arguments='{"c": "é"}')
    )
    finals = [
        ChunkChoice(index=0, delta=Delta(tool_calls=[call]), finish_reason="tool_calls"),
        ChunkChoice(index=1, delta=Delta(content="held {"), finish_reason="length"),
        ChunkChoice(index=2, delta=Delta(), finish_reason="stop"),
    ]
    cases: list[tuple[list[ChunkChoice], dict]] = [
        (role, {}),
        (finals, {"usage": USAGE, "time_info": TIMING}),
        (finals, {"usage": None, "time_info": TIMING}),
        ([], {"usage": USAGE}),
    ]
    for choices, fields in cases:
        encoded = template.of(choices, **fields)
        assert encoded.data == chat_model_bytes(envelope, choices, **fields)
        assert encoded.usage is fields.get("usage")
        assert encoded.time_info is fields.get("time_info")


COMPLETION_LOGPROBS = CompletionLogprobs(
    tokens=[" Hi", "\n"],
    token_logprobs=[None, -0.00001234],
    top_logprobs=[None, {"\n": -0.00001234, '"': -9999.0}],
    text_offset=[0, 3],
)


@pytest.mark.parametrize("envelope", ENVELOPES)
@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize(
    ("logprobs", "tokens"), [(None, None), (COMPLETION_LOGPROBS, None), (None, [1, 2]), (None, [])]
)
def test_completion_chunk_is_the_models_bytes(
    envelope: dict, text: str, logprobs: CompletionLogprobs | None, tokens: list[int] | None
) -> None:
    envelope = envelope | {"id": "cmpl-1"}
    template = ChunkTemplate(CompletionResponse, envelope)
    fast = template.encode(completion_text_choice(2, text, logprobs, tokens))
    choice = CompletionChoice(index=2, text=text, logprobs=logprobs, tokens=tokens)
    expected = CompletionResponse(**envelope, choices=[choice]).model_dump_json().encode()
    assert fast.data == expected


def test_sse_framing_is_sse_starlettes() -> None:
    """The route frames events itself: the bytes sse-starlette's encoder made of them."""
    data = ChunkTemplate(ChatCompletionChunk, ENVELOPES[1]).encode(
        chat_content_choice(0, TEXTS[3], None)
    )
    framed = ServerSentEvent(data=data.data.decode(), sep="\n").encode()
    assert framed == b"data: " + data.data + b"\n\n"


@pytest.mark.parametrize("text", ["a\x85b", "a\u2028b\u2029c", "\u2027\u202a é\x84\x86 …"])
def test_line_safe_events_stay_one_line_for_any_line_reader(text: str) -> None:
    """U+0085, U+2028 and U+2029 end a line for str.splitlines() (and httpx's iter_lines()):
    escaped, an event is one line and still the same JSON; other characters pass as they are."""
    data = (
        ChunkTemplate(ChatCompletionChunk, ENVELOPES[1])
        .encode(chat_content_choice(0, text, None))
        .data
    )
    safe = line_safe(data)
    assert safe.decode().splitlines() == [safe.decode()]
    assert json.loads(safe) == json.loads(data)
    assert (safe == data) == (text == "\u2027\u202a é\x84\x86 …")
