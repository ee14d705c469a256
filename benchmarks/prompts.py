"""Prompts of an exact token length, made with the target model's tokenizer, or a dataset.

*Exact* means: the user message adds exactly ``N`` tokens to the rendered chat prompt. The
builder renders the chat template with an empty user message and with the candidate text,
tokenizes both (``add_special_tokens=False``; the template carries its own special tokens)
and adjusts the text until the difference is ``N``. Each request records the predicted total
(``expected_prompt_tokens``) and the server's ``usage.prompt_tokens``; the summary counts the
requests where they differ. A server whose template differs from the tokenizer's (another
system preamble, tools rendered differently) shows up there while the user content stays
exactly ``N`` tokens.

Every prompt is different (fresh random draw) so that prefix caching cannot serve one
request from another's work.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["Prompt", "PromptBuilder", "PromptError", "load_dataset"]

PromptKind = Literal["random", "text"]

_WORD_TEXT = (
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force "
    "education river mountain garden window letter music paper market energy table street "
    "morning simple quick bright careful gentle early ancient modern quiet open strong "
    "build carry follow explain measure travel listen remember describe compare improve"
)
WORDS = tuple(_WORD_TEXT.split())
"""Plain English words for ``text`` prompts: natural tokenization, shuffled per prompt."""

MAX_STEPS = 24
MAX_DRAWS = 8


class PromptError(ValueError):
    """No text of the requested length could be made, or a dataset line is malformed."""


@dataclass(frozen=True)
class Prompt:
    """The messages of one request and what the client expects the server to count."""

    messages: list[dict[str, Any]]
    expected_prompt_tokens: int | None = None
    max_tokens: int | None = None
    """Per-prompt output budget from a dataset line; ``None`` uses ``--output-len``."""
    extra: dict[str, Any] = field(default_factory=dict)


class PromptBuilder:
    """Counts chat prompts with the model's tokenizer and makes exact-length user messages."""

    def __init__(
        self,
        tokenizer_path: str | Path,
        system: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        from transformers import AutoTokenizer  # slow import: only when prompts are built

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
        self.system = system
        self.tools = list(tools) if tools else None
        special = set(self.tokenizer.all_special_ids)
        self._vocab = [i for i in range(self.tokenizer.vocab_size) if i not in special]

    def count(self, messages: Sequence[dict[str, Any]]) -> int:
        """Tokens of the rendered chat prompt, generation header included."""
        text = self.tokenizer.apply_chat_template(
            list(messages), tools=self.tools, add_generation_prompt=True, tokenize=False
        )
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def messages(self, content: str) -> list[dict[str, Any]]:
        """The chat for one request: the optional system message, then the user's."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": content}]

    def exact(self, n: int, kind: PromptKind, rng: random.Random) -> Prompt:
        """A prompt whose user message adds exactly ``n`` tokens to the chat prompt."""
        if n < 1:
            raise PromptError("the input length must be at least 1 token")
        overhead = self.count(self.messages(""))
        for _ in range(MAX_DRAWS):
            make = self._random_text(n, rng) if kind == "random" else self._word_text(n, rng)
            text = self._fit(make, n, overhead)
            if text is not None:
                messages = self.messages(text)
                return Prompt(messages, expected_prompt_tokens=overhead + n)
        raise PromptError(f"could not make a user message of exactly {n} tokens")

    def _random_text(self, n: int, rng: random.Random) -> Callable[[int], str]:
        ids = [rng.choice(self._vocab) for _ in range(2 * n + 16)]
        return lambda m: self.tokenizer.decode(ids[:m]).strip()

    def _word_text(self, n: int, rng: random.Random) -> Callable[[int], str]:
        words = [rng.choice(WORDS) for _ in range(2 * n + 16)]
        return lambda m: " ".join(words[:m])

    def _fit(self, make: Callable[[int], str], n: int, overhead: int) -> str | None:
        """Search the prefix length whose text adds ``n`` tokens; ``None`` if it cycles."""
        tried: set[int] = set()
        m = n
        for _ in range(MAX_STEPS):
            text = make(m)
            got = self.count(self.messages(text)) - overhead if text else 0
            if got == n:
                return text
            tried.add(m)
            step = n - got
            nxt = max(1, m + step)
            if nxt in tried:
                nxt = max(1, m + (1 if step > 0 else -1))
            if nxt in tried:
                return None
            m = nxt
        return None


def load_dataset(path: Path, builder: PromptBuilder | None = None) -> list[Prompt]:
    """Read a JSONL file of ``{"messages": [...], "max_tokens"?: int}`` lines.

    With a builder, each prompt also gets the tokenizer's prediction of its length.
    """
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{path}:{number}: not JSON ({exc.msg})") from None
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages:
            raise PromptError(f'{path}:{number}: expected {{"messages": [...]}}')
        max_tokens = row.get("max_tokens")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise PromptError(f"{path}:{number}: max_tokens must be a positive integer")
        expected = builder.count(messages) if builder else None
        prompts.append(Prompt(messages, expected, max_tokens))
    if not prompts:
        raise PromptError(f"{path}: no prompts")
    return prompts
