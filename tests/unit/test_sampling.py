"""The one mapping from request fields to vLLM sampling parameters."""

from __future__ import annotations

from typing import Any

from vllm.sampling_params import RequestOutputKind

from sampling import DEFAULTS, to_sampling_params
from server.chat.protocol import ChatCompletionRequest

STOPS = (7, 8)


def params(**fields: Any) -> Any:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | fields
    return to_sampling_params(ChatCompletionRequest(**body), max_tokens=50, stop_token_ids=STOPS)


def test_defaults_come_from_the_table_not_the_model() -> None:
    p = params()
    assert (p.temperature, p.top_p, p.n) == (DEFAULTS["temperature"], DEFAULTS["top_p"], 1)
    assert p.temperature == 1.0 and p.top_p == 1.0
    assert p.max_tokens == 50 and p.seed is None and p.stop == []
    assert p.stop_token_ids == list(STOPS)
    assert p.output_kind == RequestOutputKind.DELTA
    assert p.logprobs is None and not p.include_stop_str_in_output


def test_fields_map_through() -> None:
    p = params(temperature=0.3, top_p=0.5, n=3, seed=11, stop=["a", "b"], presence_penalty=1,
               frequency_penalty=-1, logprobs=True, top_logprobs=4, logit_bias={"5": -100},
               top_k=20, min_p=0.1, repetition_penalty=1.2, min_tokens=2)  # fmt: skip
    assert (p.temperature, p.top_p, p.n, p.seed) == (0.3, 0.5, 3, 11)
    assert p.stop == ["a", "b"]
    assert (p.presence_penalty, p.frequency_penalty) == (1, -1)
    assert p.logprobs == 4 and p.logit_bias == {5: -100}
    assert (p.top_k, p.min_p, p.repetition_penalty, p.min_tokens) == (20, 0.1, 1.2, 2)


def test_greedy_is_temperature_zero() -> None:
    from vllm.sampling_params import SamplingType

    p = params(temperature=0, top_p=0.5)
    assert p.temperature == 0 and p.sampling_type == SamplingType.GREEDY


def test_logprobs_without_top_logprobs_is_the_chosen_token_only() -> None:
    assert params(logprobs=True).logprobs == 0
    assert params(top_logprobs=3).logprobs is None  # top_logprobs alone asks for nothing


def test_openai_top_k_minus_one_means_all_tokens() -> None:
    assert params(top_k=-1).top_k == 0


def test_ignore_eos_runs_to_max_tokens_past_end_of_turn_tokens() -> None:
    p = params(ignore_eos=True)
    assert p.ignore_eos and p.stop_token_ids == []


def test_fresh_params_skip_the_engines_deep_copy() -> None:
    """As vLLM's own server: each request's parameters are its own, so the engine need not
    deep-copy (and revalidate) them; its shallow copy is still its own object."""
    p = params(stop=["x"])
    assert p.skip_clone
    copy = p.clone()
    assert copy is not p and copy.stop == ["x"]
