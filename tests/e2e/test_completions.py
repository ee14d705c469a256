"""Text completions (``POST /v1/completions``) end to end: the real server and engine on
smollm2-135m (text prompts) and llama3.1-tiny (token-id prompts, Llama 3.1's vocabulary), the
openai and cerebras SDKs' completions clients, and ``vllm bench serve``'s completions backend."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from cerebras.cloud.sdk import Cerebras
from transformers import AutoTokenizer

from tests.support.closing import Closing
from tests.support.probes import engine_requests, wait_idle, wait_until
from tests.support.serverproc import ServerProcess, model_dir
from tests.support.timing import assert_measured_time_info

pytestmark = pytest.mark.e2e

SMOL = "smollm2-135m"
TINY = "llama3.1-tiny"
PROMPT = "The capital of France is"
IGNORE_EOS = {"ignore_eos": True}


@pytest.fixture(scope="module")
def smol_tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(model_dir(SMOL))


def sse(url: str, body: dict[str, Any]) -> list[str]:
    """The raw ``data:`` payloads of a streamed request, [DONE] included."""
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


# ---------------------------------------------------------------- smollm2-135m, text prompts


def test_plain_completion_has_openai_and_cerebras_fields(client: openai.OpenAI) -> None:
    sent_at = time.time()
    r = client.completions.create(model=SMOL, prompt=PROMPT, temperature=0, extra_body=IGNORE_EOS)
    received_at = time.time()
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    assert r.model == SMOL and r.system_fingerprint
    (choice,) = r.choices
    assert choice.index == 0 and choice.text and choice.logprobs is None
    # No max_tokens: OpenAI's legacy default of 16, all of them with ignore_eos.
    assert r.usage.completion_tokens == 16 and choice.finish_reason == "length"
    assert r.usage.total_tokens == r.usage.prompt_tokens + 16
    assert_measured_time_info(
        r.model_extra["time_info"],
        completion_tokens=16,
        sent_at=sent_at,
        received_at=received_at,
        created=r.created,
    )


def test_stream_gives_the_same_text_then_usage_and_done(
    client: openai.OpenAI, smol_url: str
) -> None:
    plain = client.completions.create(model=SMOL, prompt=PROMPT, max_tokens=12, temperature=0)
    chunks = list(
        client.completions.create(
            model=SMOL,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == plain.choices[0].finish_reason and not any(finishes[:-1])
    # include_usage: a last chunk of no choices carries the usage, and only it does.
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert "time_info" in chunks[-2].model_extra

    body = {"model": SMOL, "prompt": PROMPT, "max_tokens": 3, "stream": True}
    raw = sse(smol_url, body)
    assert raw[-1] == "[DONE]"
    # Framed as OpenAI frames events: "\n\n" after each, no "\r" (which vLLM's bench and
    # other "\n\n"-splitting parsers do not read).
    wire = httpx.post(f"{smol_url}/v1/completions", json=body, timeout=60).text
    assert wire.endswith("data: [DONE]\n\n") and "\r" not in wire
    last = json.loads(raw[-2])  # without include_usage, as chat: usage on the last chunk
    assert last["usage"]["completion_tokens"] == 3 and last["choices"][0]["finish_reason"]


def test_cerebras_sdk_plain_and_streamed(cerebras: Cerebras) -> None:
    r = cerebras.completions.create(
        model=SMOL, prompt=PROMPT, max_tokens=8, temperature=0, return_raw_tokens=True
    )
    assert r.object == "text_completion" and r.time_info and r.time_info.total_time > 0
    (choice,) = r.choices
    assert choice.text and len(choice.tokens) == r.usage.completion_tokens
    chunks = list(
        cerebras.completions.create(
            model=SMOL, prompt=PROMPT, max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_echo_with_logprobs_is_openais_legacy_format(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=SMOL, prompt=PROMPT, max_tokens=5, temperature=0, echo=True, logprobs=2
    )
    choice = r.choices[0]
    assert choice.text.startswith(PROMPT) and len(choice.text) > len(PROMPT)
    lp = choice.logprobs
    total = r.usage.prompt_tokens + r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == total
    assert "".join(lp.tokens) == choice.text
    # The first prompt token has nothing before it.
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for token, logprob, top in zip(
        lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True
    ):
        assert logprob <= 0 and top[token] == logprob and 1 <= len(top) <= 3  # 2 + sampled
    # Greedy: each generated token is the most likely one.
    for logprob, top in zip(lp.token_logprobs[-5:], lp.top_logprobs[-5:], strict=True):
        assert logprob == max(top.values())
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(total)]
    assert lp.text_offset[r.usage.prompt_tokens] == len(PROMPT)


def test_line_separators_in_a_stream_do_not_split_its_events(
    smol_url: str, client: openai.OpenAI
) -> None:
    # str.splitlines() ends a line at U+0085, U+2028 and U+2029, and so does httpx's
    # iter_lines(), which sse() reads with: unescaped, an event holding one breaks in two.
    prompt = "One\x85two\u2028three\u2029four"
    body = {"model": SMOL, "prompt": prompt, "max_tokens": 3, "echo": True, "stream": True}
    *chunks, done = sse(smol_url, body)
    assert done == "[DONE]"
    text = "".join(c["text"] for chunk in chunks for c in json.loads(chunk)["choices"])
    assert text.startswith(prompt) and len(text) > len(prompt)
    streamed = client.completions.create(**body)  # the SDK's own SSE reader, too
    assert "".join(c.choices[0].text for c in streamed if c.choices).startswith(prompt)


def test_logprobs_without_echo_count_offsets_from_the_prompt(client: openai.OpenAI) -> None:
    r = client.completions.create(model=SMOL, prompt=PROMPT, max_tokens=4, logprobs=0, seed=7)
    choice = r.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == r.usage.completion_tokens and "".join(lp.tokens) == choice.text
    assert lp.text_offset[0] == len(PROMPT)  # offsets into the prompt followed by the text
    assert all(
        top == {t: v}
        for t, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True)
    )


def test_several_prompts_with_n_number_choices_prompt_by_prompt(client: openai.OpenAI) -> None:
    prompts = ["Once upon a time", "def main():", "Dear Sir,"]
    r = client.completions.create(
        model=SMOL, prompt=prompts, n=2, max_tokens=4, seed=3, echo=True, extra_body=IGNORE_EOS
    )
    assert [c.index for c in r.choices] == list(range(6))
    for c in r.choices:
        assert c.text.startswith(prompts[c.index // 2]) and c.finish_reason == "length"
    singles = [client.completions.create(model=SMOL, prompt=p, max_tokens=1) for p in prompts]
    assert r.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)  # once each
    assert r.usage.completion_tokens == 6 * 4

    streamed = list(
        client.completions.create(
            model=SMOL,
            prompt=prompts,
            n=2,
            max_tokens=4,
            echo=True,
            stream=True,
            extra_body=IGNORE_EOS,
        )
    )
    texts: dict[int, str] = {}
    for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert sorted(texts) == list(range(6))
    assert all(t.startswith(prompts[i // 2]) and t != prompts[i // 2] for i, t in texts.items())
    assert [c.finish_reason for c in streamed[-1].choices] == ["length"] * 6


def test_token_id_prompt_is_the_same_as_its_text(
    client: openai.OpenAI, smol_tokenizer: Any
) -> None:
    ids = smol_tokenizer.encode(PROMPT)
    by_text = client.completions.create(model=SMOL, prompt=PROMPT, max_tokens=8, temperature=0)
    by_ids = client.completions.create(
        model=SMOL, prompt=ids, max_tokens=8, temperature=0, echo=True
    )
    assert by_ids.usage.prompt_tokens == len(ids) == by_text.usage.prompt_tokens
    assert by_ids.choices[0].text == PROMPT + by_text.choices[0].text


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"suffix": "and so on"}, "suffix"),
        ({"best_of": 2}, "best_of"),
        ({"best_of": 3, "n": 2}, "best_of"),
        ({"prompt": [1, 49_152]}, "prompt"),  # smollm2's vocabulary has 49,152 tokens
        ({"prompt": []}, "prompt"),
        ({"prompt": [[5], []]}, "prompt"),
        ({"prompt": [-3]}, "prompt"),
        ({"logprobs": 21}, "logprobs"),
        ({"max_tokens": 9000}, "max_tokens"),
        ({"grammar_root": "root"}, "grammar_root"),
        ({"logit_bias": {"999999": 1}}, "logit_bias"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(
    client: openai.OpenAI, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        # extra_body: sent as given, the SDK's own fields overridden (grammar_root is Cerebras's)
        client.completions.create(model=SMOL, prompt=PROMPT, max_tokens=2, extra_body=fields)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param


def test_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt=PROMPT)


def test_access_log_names_the_path_user_and_usage(
    client: openai.OpenAI, smol_server: ServerProcess
) -> None:
    r = client.completions.with_raw_response.create(
        model=SMOL, prompt=PROMPT, max_tokens=3, user="cmpl-user-9"
    )
    answer = r.parse()
    line = smol_server.access_line(r.headers["x-request-id"])
    assert line["path"] == "/v1/completions" and line["status"] == 200
    assert line["user"] == "cmpl-user-9" and line["id"] == answer.id
    assert line["usage"] == answer.usage.model_dump(exclude_none=True)


ABORTED_WITHIN_S = 30
"""Seconds for the engine to let a gone client's requests go: against the minutes their
4,000 tokens would take, with room for a loaded machine."""


def test_a_client_that_leaves_aborts_every_prompt(smol_url: str) -> None:
    """Several prompts are several engine requests: leaving a stream, or a plain request,
    aborts all of them (they would otherwise run to 4,000 tokens)."""
    body = {"model": SMOL, "prompt": ["a", "b", "c"], "max_tokens": 4000, "ignore_eos": True}
    wait_idle(smol_url, 60)  # nothing left by an earlier test on the shared server
    with httpx.stream(
        "POST", f"{smol_url}/v1/completions", json=body | {"stream": True}, timeout=60
    ) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        # All three are in the engine (for minutes) once each has been handed to it.
        wait_until(lambda: engine_requests(smol_url) == 3, 60, "the three prompts generating")
    wait_idle(smol_url, ABORTED_WITHIN_S)

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{smol_url}/v1/completions", json=body, timeout=2)
    wait_idle(smol_url, ABORTED_WITHIN_S)


def test_vllm_bench_serve_drives_the_completions_endpoint(smol_url: str) -> None:
    """vLLM's own load generator, completions backend, streamed, against this server."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    requests, output_len = 16, 16
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(
        [
            "--backend", "openai", "--base-url", smol_url, "--endpoint", "/v1/completions",
            "--model", SMOL, "--tokenizer", str(model_dir(SMOL)), "--dataset-name", "random",
            "--random-input-len", "32", "--random-output-len", str(output_len), "--ignore-eos",
            "--num-prompts", str(requests), "--max-concurrency", "4", "--seed", "1",
            "--disable-tqdm",
        ]
    )  # fmt: skip
    result = main(args)
    print("\nvllm bench serve /v1/completions:", json.dumps(
        {k: result[k] for k in ("completed", "request_throughput", "output_throughput",
                                "median_ttft_ms", "median_tpot_ms")}
    ))  # fmt: skip
    assert result["completed"] == requests and result["failed"] == 0
    assert result["total_output_tokens"] == requests * output_len


# ---------------------------------------------------------------- llama3.1-tiny, token ids


@pytest.fixture(scope="module")
def tiny(tiny_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{tiny_url}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def test_tiny_token_id_prompts_plain_and_streamed(
    tiny: openai.OpenAI, tiny_url: str, closing: Closing
) -> None:
    # Ids from all over Llama 3.1's 128k vocabulary, the <|begin_of_text|> token first.
    prompts = [[128000, 9906, 1917, 0], [128000, 100000, 127999, 42, 7]]
    r = tiny.completions.create(
        model=TINY, prompt=prompts, max_tokens=6, temperature=0, extra_body=IGNORE_EOS
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.prompt_tokens == 9 and r.usage.completion_tokens == 12
    streamed = list(
        tiny.completions.create(
            model=TINY, prompt=prompts, max_tokens=6, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body=IGNORE_EOS,
        )
    )  # fmt: skip
    texts = ["", ""]
    for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == [c.text for c in r.choices]
    assert streamed[-1].usage == r.usage

    single = tiny.completions.create(
        model=TINY, prompt=prompts[0], max_tokens=6, temperature=0, extra_body=IGNORE_EOS
    )
    cb = closing(Cerebras(base_url=tiny_url, api_key="unused", max_retries=0))
    raw = cb.completions.create(
        model=TINY, prompt=prompts[0], max_tokens=6, temperature=0, return_raw_tokens=True,
        echo=True, logprobs=1, extra_body=IGNORE_EOS,
    )  # fmt: skip
    choice = raw.choices[0]
    assert len(choice.tokens) == 6 and choice.text.startswith("<|begin_of_text|>")
    assert choice.text.endswith(single.choices[0].text)
    assert len(choice.logprobs.tokens) == 4 + 6 and choice.logprobs.token_logprobs[0] is None


def test_tiny_token_ids_outside_the_vocabulary_are_a_400(tiny: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        tiny.completions.create(model=TINY, prompt=[[128000, 5], [128256]], max_tokens=2)
    assert err.value.body["param"] == "prompt" and "128256" in err.value.body["message"]
