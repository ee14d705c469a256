"""The models this process serves, looked up by the id clients send."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from grammars import GrammarCompiler
from server.errors import ModelNotFoundError
from server.models.config import ModelConfig
from server.models.engine import Engine
from server.models.formats import ChatFormat, get_chat_format

__all__ = ["ModelPool", "ServedModel"]


@dataclass
class ServedModel:
    config: ModelConfig
    engine: Engine
    chat_format: ChatFormat = field(init=False)
    stop_token_ids: tuple[int, ...] = field(init=False)
    longest_token_bytes: int = field(init=False)
    grammar: GrammarCompiler | None = None
    """Proves the model's constraints compile (it needs the model's vocabulary)."""
    created: int = 0

    def __post_init__(self) -> None:
        self.chat_format = get_chat_format(self.config.chat_format)
        tokenizer = self.engine.tokenizer
        self.stop_token_ids = tuple(
            tokenizer.convert_tokens_to_ids(t) for t in self.chat_format.stop_tokens
        )
        # Byte-level BPE spells each byte as one character, so this is the most bytes one
        # token can cover: a prompt of more bytes than context x this cannot fit.
        self.longest_token_bytes = max(len(token) for token in tokenizer.get_vocab())

    @property
    def id(self) -> str:
        return self.config.id

    async def warm_up(self) -> None:
        """The compile worker, if the backend has one, loads its vocabulary and builds JSON
        mode's grammar (:meth:`ChatService.warm_up` then runs JSON mode through the engine)."""
        if self.grammar is not None:
            await self.grammar.start()


class ModelPool:
    def __init__(self, models: list[ServedModel]) -> None:
        self._models = {m.id: m for m in models}

    def get(self, model_id: str) -> ServedModel:
        try:
            return self._models[model_id]
        except KeyError:
            loaded = ", ".join(self._models)
            raise ModelNotFoundError(
                f"The model '{model_id}' does not exist or is not served here. "
                f"Loaded models: {loaded}.",
                param="model",
            ) from None

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    @property
    def alive(self) -> bool:
        return all(m.engine.alive for m in self)
