"""The pure parts of the load benchmark: percentiles, goodput, SSE parsing, ratio table.

No server: records are built by hand, streams are byte strings, the load generator drives a
fake sender. Percentiles are checked against NumPy, the reference vLLM's benchmark uses.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.client import StreamState, classify_error, normalize_base_url
from benchmarks.load import LoadShape, run_load
from benchmarks.metrics import distribution, meets_slos, parse_slo, percentile, summarize
from benchmarks.prompts import PromptBuilder, PromptError, load_dataset
from benchmarks.ratios import format_ratio_table, lookup, ratio_rows
from benchmarks.records import RequestRecord
from benchmarks.scenarios import build_payload, check_output
from benchmarks.sse import SSEEvent, SSEParser


def rec(**kw: Any) -> RequestRecord:
    """A completed streamed request unless told otherwise."""
    base: dict[str, Any] = {"index": 0, "status": 200, "latency": 1.0, "output_tokens": 11}
    return RequestRecord(**(base | kw))


# --- percentiles and distributions -------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 32, 101])
def test_percentile_matches_numpy_linear(n: int) -> None:
    values = [random.Random(n).uniform(0, 100) for _ in range(n)]
    for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_distribution_converts_seconds_to_ms_and_is_none_when_empty() -> None:
    dist = distribution([0.1, 0.2, 0.3, 0.4])
    assert dist is not None
    assert dist["mean"] == pytest.approx(250.0) and dist["p50"] == pytest.approx(250.0)
    assert dist["min"] == pytest.approx(100.0) and dist["max"] == pytest.approx(400.0)
    assert dist["count"] == 4
    assert distribution([]) is None


# --- SLOs and goodput ------------------------------------------------------------------


def test_parse_slo_accepts_both_separators_and_aliases() -> None:
    assert parse_slo("ttft=2000") == ("ttft", 2000.0)
    assert parse_slo("TPOT:200") == ("tpot", 200.0)
    assert parse_slo("e2e=5000") == ("e2el", 5000.0)
    for bad in ("itl=5", "ttft=fast", "ttft=0", "ttft"):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_tpot_follows_vllm_definition() -> None:
    # 11 tokens: first at 0.5 s, last at 1.5 s -> 10 gaps of 100 ms.
    assert rec(ttft=0.5, last_token=1.5).tpot == pytest.approx(0.1)
    assert rec(ttft=0.5, last_token=0.5, output_tokens=1).tpot is None
    assert rec().tpot is None  # not streamed


def test_meets_slos() -> None:
    slos = {"ttft": 600.0, "tpot": 150.0}
    assert meets_slos(rec(ttft=0.5, last_token=1.5), slos)
    assert not meets_slos(rec(ttft=0.7, last_token=1.5), slos)  # TTFT 700 ms
    assert not meets_slos(rec(ttft=0.5, last_token=2.5), slos)  # TPOT 200 ms
    assert not meets_slos(rec(ttft=0.5, last_token=1.5, invalid="json_parse"), slos)
    assert not meets_slos(rec(ttft=0.5, last_token=1.5, status=500, error="http_500"), slos)
    # One token has no TPOT and, as in vLLM, passes a TPOT bound.
    assert meets_slos(rec(ttft=0.5, last_token=0.5, output_tokens=1), slos)
    # A request that was not streamed has no TTFT: it cannot be shown to meet the bound.
    assert not meets_slos(rec(), {"ttft": 10_000.0})
    assert meets_slos(rec(latency=0.9), {"e2el": 1000.0})
    assert not meets_slos(rec(latency=1.1), {"e2el": 1000.0})


def test_summarize_counts_throughput_goodput_errors_and_server_times() -> None:
    info = {"queue_time": 0.01, "prompt_time": 0.02, "completion_time": 0.5, "total_time": 0.53}
    records = [
        rec(index=0, ttft=0.5, last_token=1.5, prompt_tokens=100, expected_prompt_tokens=100,
            time_info=info, itls=[0.1] * 10),
        rec(index=1, ttft=0.9, last_token=1.9, prompt_tokens=101, expected_prompt_tokens=100,
            itls=[0.1] * 10),
        rec(index=2, ttft=0.2, last_token=1.2, invalid="args_schema", prompt_tokens=100),
        rec(index=3, status=400, error="failed_generation", latency=0.3, output_tokens=0),
        rec(index=4, status=503, error="http_503", latency=0.1, output_tokens=0),
        rec(index=5, status=None, error="timeout", latency=None, output_tokens=0),
    ]  # fmt: skip
    s = summarize(records, duration_s=2.0, slos_ms={"ttft": 600.0})
    assert (s["requests"], s["completed"], s["failed"]) == (6, 3, 3)
    assert s["request_throughput"] == pytest.approx(1.5)
    assert s["output_throughput"] == pytest.approx(33 / 2)
    assert s["total_token_throughput"] == pytest.approx((33 + 301) / 2)
    # Good: index 0 only (1 has TTFT 900 ms, 2 is invalid, the rest failed).
    assert s["goodput"]["good_requests"] == 1
    assert s["goodput"]["request_goodput"] == pytest.approx(0.5)
    assert s["status_counts"] == {"200": 3, "400": 1, "503": 1, "none": 1}
    assert s["errors"] == {"failed_generation": 1, "http_503": 1, "timeout": 1}
    assert s["failed_generation"] == 1
    assert s["invalid_outputs"] == 1 and s["invalid_reasons"] == {"args_schema": 1}
    assert s["ttft_ms"]["p50"] == pytest.approx(500.0)
    assert s["itl_ms"]["count"] == 20
    assert s["server_time_ms"]["completion_time"]["mean"] == pytest.approx(500.0)
    assert s["prompt_tokens"]["checked"] == 2
    assert s["prompt_tokens"]["mismatched"] == 1 and s["prompt_tokens"]["max_abs_diff"] == 1


# --- SSE and streamed chunks -----------------------------------------------------------

STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b": keep-alive comment\n\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"Caf\xc3\xa9"}}]}\r\n\r\n'
    b'data: {"choices":[{"index":0,"delta":{"content":" au lait"},"finish_reason":"length"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2},'
    b'"time_info":{"queue_time":0.001,"total_time":0.2}}\n\n'
    b"data: [DONE]\n\n"
)


def _events(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events = [e for c in chunks for e in parser.feed(c)]
    return events + parser.flush()


def test_sse_parser_is_independent_of_chunk_boundaries() -> None:
    whole = _events([STREAM])
    assert [e.data for e in whole][-1] == "[DONE]"
    assert len(whole) == 5  # the comment is not an event
    assert json.loads(whole[1].data)["choices"][0]["delta"]["content"] == "Café"
    # Byte by byte (splitting the UTF-8 "é" and the "\r\n" pairs) gives the same events.
    assert _events([STREAM[i : i + 1] for i in range(len(STREAM))]) == whole
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(STREAM)), 20))
    pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
    assert _events(pieces) == whole


def test_sse_multiline_data_event_names_and_missing_final_blank_line() -> None:
    events = _events([b"event: error\ndata: first\ndata:second\n\n", b"data: tail"])
    assert events == [SSEEvent("first\nsecond", "error"), SSEEvent("tail")]
    assert _events([b"data: a\r", b"\ndata: b\r\r"]) == [SSEEvent("a\nb")]


def test_stream_state_times_tokens_not_role_chunks() -> None:
    state = StreamState()
    for now, event in enumerate(_events([STREAM]), start=1):
        state.handle(event.data, now * 0.1)
    # Events: role (0.1), content (0.2), content (0.3), usage (0.4), DONE (0.5).
    assert state.first == pytest.approx(0.2) and state.last == pytest.approx(0.3)
    assert state.itls == [pytest.approx(0.1)]
    assert "".join(state.content) == "Café au lait" and state.finish_reason == "length"
    assert state.data["usage"]["completion_tokens"] == 2
    assert state.data["time_info"]["queue_time"] == 0.001
    assert state.error is None


def test_stream_state_assembles_tool_call_deltas() -> None:
    chunks = [
        {"delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "get_weather"}}]}},
        {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}},
        {"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}},
        {"delta": {}, "finish_reason": "tool_calls"},
    ]
    state = StreamState()
    for i, choice in enumerate(chunks):
        state.handle(json.dumps({"choices": [choice]}), float(i))
    call = state.tool_calls[0]
    assert call["id"] == "c1" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert state.first == 0.0 and state.last == 2.0 and state.finish_reason == "tool_calls"
    assert check_output("tools", None, [call], state.finish_reason) is None


def test_errors_in_streams_and_bodies_are_classified() -> None:
    state = StreamState()
    state.handle(json.dumps({"error": {"message": "bad", "failed_generation": "{oops"}}), 0.1)
    assert state.error is not None and state.error[0] == "failed_generation"
    state = StreamState()
    state.handle(json.dumps({"error": {"message": "engine died", "type": "server_error"}}), 0.1)
    assert state.error == ("stream_error", "engine died")
    body = {"error": {"message": "no", "type": "invalid_request_error", "failed_generation": ""}}
    assert classify_error(400, json.dumps(body).encode())[0] == "failed_generation"
    assert classify_error(400, b'{"error": {"message": "bad temperature"}}') == (
        "http_400",
        "bad temperature",
    )
    assert classify_error(502, b"<html>Bad gateway</html>")[0] == "http_502"


def test_normalize_base_url() -> None:
    assert normalize_base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalize_base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"


# --- scenario payloads and checks ------------------------------------------------------


def test_payloads_per_scenario() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    body = build_payload("stream", "m", msgs, 64, stream=True, ignore_eos=True)
    assert body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["max_tokens"] == 64
    body = build_payload("json", "m", msgs, 64, stream=False, ignore_eos=False, extra={"seed": 1})
    assert body["response_format"] == {"type": "json_object"} and body["seed"] == 1
    assert "ignore_eos" not in body and "stream_options" not in body
    body = build_payload("tools", "m", msgs, None, stream=False, ignore_eos=False)
    assert body["tool_choice"] == "required" and body["tools"] and "max_tokens" not in body


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize(
    ("scenario", "content", "calls", "finish", "expected"),
    [
        ("json", '{"a": 1}', [], "stop", None),
        ("json", "[1, 2]", [], "stop", "not_object"),
        ("json", '{"a": ', [], "stop", "json_parse"),
        ("json", '{"a": ', [], "length", "truncated"),
        ("tools", None, [_call("get_weather", '{"city": "Oslo"}')], "tool_calls", None),
        ("tools", None, [_call("get_weather", '{"town": "Oslo"}')], "tool_calls", "args_schema"),
        ("tools", None, [_call("get_weather", '{"city": ')], "tool_calls", "args_parse"),
        ("tools", None, [_call("launch_rocket", "{}")], "tool_calls", "unknown_tool"),
        ("tools", "I will not call a tool", [], "stop", "no_tool_call"),
        ("chat", "anything", [], "stop", None),
    ],
)
def test_check_output(
    scenario: Any, content: str | None, calls: list[Any], finish: str, expected: str | None
) -> None:
    assert check_output(scenario, content, calls, finish) == expected


# --- ratio table -----------------------------------------------------------------------


def _summary(**kw: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "request_throughput": 2.0,
        "output_throughput": 100.0,
        "ttft_ms": {"mean": 200.0, "p50": 100.0, "p90": 300.0, "p99": 400.0},
        "failed": 0,
        "prompt_tokens": {"reported": {"mean": 94.0}},
    }
    return s | kw


def test_ratio_rows_direction_ties_and_missing_metrics() -> None:
    a = _summary(output_throughput=120.0, ttft_ms={"mean": 200.0, "p50": 200.0, "p90": 301.0})
    rows = {r.label: r for r in ratio_rows(a, _summary())}
    assert rows["output throughput (tok/s)"].ratio == pytest.approx(1.2)
    assert rows["output throughput (tok/s)"].better == "A"  # more tokens/s
    assert rows["TTFT p50 (ms)"].ratio == pytest.approx(2.0)
    assert rows["TTFT p50 (ms)"].better == "B"  # twice the latency
    assert rows["TTFT p90 (ms)"].better == "="  # within 2 %
    assert rows["request throughput (req/s)"].better == "="
    assert rows["failed requests"].ratio == 1.0  # 0 / 0 is parity, not an error
    assert rows["prompt tokens (mean)"].better == "="
    assert rows["TTFT p99 (ms)"].ratio is None and rows["TTFT p99 (ms)"].a is None
    assert "TPOT p50 (ms)" not in rows  # absent from both sides
    diff = {r.label: r for r in ratio_rows(_summary(prompt_tokens={"reported": {"mean": 120}}),
                                           _summary())}  # fmt: skip
    assert diff["prompt tokens (mean)"].better == "!="


def test_ratio_of_zero_denominator_is_missing() -> None:
    rows = {r.label: r for r in ratio_rows(_summary(failed=3), _summary(failed=0))}
    assert rows["failed requests"].ratio is None and rows["failed requests"].better == ""


def test_format_ratio_table_names_the_sides() -> None:
    table = format_ratio_table(ratio_rows(_summary(output_throughput=50.0), _summary()),
                               "ours", "vllm")  # fmt: skip
    header, _rule, *body = table.splitlines()
    assert header.split() == ["metric", "ours", "vllm", "ours", "/", "vllm", "better"]
    line = next(r for r in body if r.startswith("output throughput"))
    assert line.split()[-3:] == ["100.00", "0.500", "vllm"]


def test_lookup_walks_nested_summaries() -> None:
    assert lookup({"a": {"b": 3}}, ("a", "b")) == 3.0
    assert lookup({"a": {"b": None}}, ("a", "b")) is None
    assert lookup({"a": 1}, ("a", "b")) is None


# --- load shapes -----------------------------------------------------------------------


def test_load_shape_validation_and_labels() -> None:
    assert LoadShape(concurrency=8, num_requests=10).label == "concurrency 8"
    assert LoadShape(rate=2.5, concurrency=16, duration_s=5).label == "rate 2.5/s max 16"
    for bad in (
        {"num_requests": 10},
        {"concurrency": 0, "num_requests": 10},
        {"rate": -1.0, "num_requests": 10},
        {"concurrency": 2},
    ):
        with pytest.raises(ValueError):
            LoadShape(**bad)


def _fake_sender(delay: float, live: list[int], peak: list[int]) -> Any:
    async def send(record: RequestRecord) -> None:
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        await asyncio.sleep(delay)
        live[0] -= 1
        record.status = 200

    return send


def test_closed_loop_keeps_concurrency_and_count() -> None:
    live, peak = [0], [0]
    shape = LoadShape(concurrency=4, num_requests=10)
    records, wall = asyncio.run(run_load(shape, _fake_sender(0.02, live, peak), progress=False))
    assert sorted(r.index for r in records) == list(range(10))
    assert peak[0] == 4
    assert 0.06 <= wall < 1.0  # three waves of 20 ms


def test_duration_stops_new_requests() -> None:
    live, peak = [0], [0]
    shape = LoadShape(concurrency=2, duration_s=0.1)
    started = time.perf_counter()
    records, _ = asyncio.run(run_load(shape, _fake_sender(0.03, live, peak), progress=False))
    assert time.perf_counter() - started < 1.0
    assert 4 <= len(records) <= 10 and all(r.start < 0.1 for r in records)


def test_poisson_arrivals_follow_rate_and_cap() -> None:
    live, peak = [0], [0]
    shape = LoadShape(rate=200.0, concurrency=3, num_requests=30, seed=1)
    records, wall = asyncio.run(run_load(shape, _fake_sender(0.03, live, peak), progress=False))
    assert len(records) == 30 and peak[0] <= 3
    # The cap (3 in flight, 30 ms each) limits the rate to 100/s: at least 0.3 s.
    assert wall >= 0.29
    live, peak = [0], [0]
    shape = LoadShape(rate=100.0, num_requests=30, seed=2)
    records, wall = asyncio.run(run_load(shape, _fake_sender(0.0, live, peak), progress=False))
    starts = sorted(r.start for r in records)
    assert 0.1 < starts[-1] < 1.0  # 29 exponential gaps of mean 10 ms: about 0.29 s


# --- exact-length prompts (Llama 3's tokenizer) ------------------------------------------

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def builder(hf_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> PromptBuilder:
    """Loaded from a folder, as ``--tokenizer`` gives it; built once (loading takes seconds)."""
    folder = tmp_path_factory.mktemp("llama3-tokenizer")
    hf_tokenizer.chat_template = LLAMA3_TEMPLATE
    hf_tokenizer.save_pretrained(folder)
    return PromptBuilder(folder, system="Answer with a JSON object.")


@pytest.mark.parametrize("kind", ["random", "text"])
def test_prompts_add_exactly_n_tokens(builder: PromptBuilder, kind: Any) -> None:
    empty = builder.count(builder.messages(""))
    rng = random.Random(0)
    for n in (1, 2, 17, 128, 1000):
        prompt = builder.exact(n, kind, rng)
        assert builder.count(prompt.messages) == empty + n == prompt.expected_prompt_tokens
    a, b = builder.exact(64, kind, rng), builder.exact(64, kind, rng)
    assert a.messages != b.messages  # fresh prompts: no prefix-cache hits between requests
    with pytest.raises(PromptError):
        builder.exact(0, kind, rng)


def test_dataset_lines_and_errors(builder: PromptBuilder, tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "Hello there"}]}\n\n'
        '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}\n'
    )
    prompts = load_dataset(path, builder)
    assert [p.max_tokens for p in prompts] == [None, 5]
    assert all(p.expected_prompt_tokens for p in prompts)
    path.write_text('{"prompt": "no messages"}\n')
    with pytest.raises(PromptError, match=r"prompts\.jsonl:1"):
        load_dataset(path)
