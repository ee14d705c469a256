"""vLLM's per-position logprobs to OpenAI's legacy Completions format: parallel lists of
tokens, their logprobs, a dict of the most likely tokens at each position, and each token's
character offset in the prompt followed by the completion."""

from __future__ import annotations

from collections.abc import Sequence

from vllm.logprobs import Logprob

from server.common.outputs import finite, token_text
from server.completions.protocol import CompletionLogprobs
from server.models.formats.base import TokenizerLike

__all__ = ["legacy_logprobs"]


def legacy_logprobs(
    token_ids: Sequence[int],
    logprobs: Sequence[dict[int, Logprob] | None],
    top_n: int,
    tokenizer: TokenizerLike,
    offset: int,
) -> CompletionLogprobs:
    """The legacy logprobs of ``token_ids``, whose first character is at ``offset``.

    ``logprobs[i]`` maps token ids to their logprobs at position ``i`` (the sampled token
    among them), or is None where there is nothing before the token (the first prompt
    token: its logprob and alternatives are null). ``top_logprobs`` holds the ``top_n``
    most likely tokens and the sampled one, so up to ``top_n + 1`` entries, as OpenAI's.
    """
    result = CompletionLogprobs()
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        chosen = candidates.get(token_id) if candidates else None
        token = token_text(token_id, chosen, tokenizer)
        result.tokens.append(token)
        result.text_offset.append(offset)
        offset += len(token)
        if candidates is None or chosen is None:
            result.token_logprobs.append(None)
            result.top_logprobs.append(None)
            continue
        result.token_logprobs.append(finite(chosen.logprob))
        ranked = sorted(
            ((tid, lp) for tid, lp in candidates.items() if lp.rank is not None),
            key=lambda item: item[1].rank or 0,
        )[:top_n]
        top = {token_text(tid, lp, tokenizer): finite(lp.logprob) for tid, lp in ranked}
        top.setdefault(token, finite(chosen.logprob))
        result.top_logprobs.append(top)
    return result
