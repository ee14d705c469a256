"""A choice's text, folded from engine deltas."""

from __future__ import annotations

from vllm.outputs import CompletionOutput

from server.common.outputs import ChoiceState


def _delta(text: str, finish: str | None = None) -> CompletionOutput:
    return CompletionOutput(
        index=0,
        text=text,
        token_ids=[1],
        cumulative_logprob=None,
        logprobs=None,
        finish_reason=finish,
    )


def test_text_is_every_delta_in_order_whenever_read() -> None:
    state = ChoiceState(0)
    assert state.text == ""
    pieces = ["Hel", "lo", ", ", "wörld", "", " 🌍"]
    for k, piece in enumerate(pieces):
        new, _ = state.add(_delta(piece), None, tokenizer=None)  # type: ignore[arg-type]
        assert new == piece
        assert state.text == "".join(pieces[: k + 1])  # read mid-stream, then added to
    state.add(_delta("!", finish="length"), None, tokenizer=None)  # type: ignore[arg-type]
    assert state.text == "Hello, wörld 🌍!"
    assert state.num_tokens == len(pieces) + 1 and state.finish_reason == "length"
