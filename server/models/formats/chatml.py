"""ChatML, the format of SmolLM2-Instruct: ``<|im_start|>role\\ncontent<|im_end|>\\n``."""

from __future__ import annotations

from server.chat.protocol import ChatMessage, Tool
from server.models.formats.base import ChatFormat, Segment
from server.models.formats.tool_calls import LLAMA3_JSON
from server.models.formats.tool_prompt import tool_system_text

__all__ = ["ChatML"]

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
START, END = "<|im_start|>", "<|im_end|>"


class ChatML(ChatFormat):
    name = "chatml"
    stop_tokens = (END,)
    tool_calls = LLAMA3_JSON  # taught by the tool prompt

    def render(self, messages: list[ChatMessage], tools: list[Tool] | None) -> list[Segment]:
        turns: list[tuple[str, str]] = []
        for m in messages:
            role: str = "system" if m.role == "developer" else m.role
            turns.append((role, self._content(m)))
        if not turns or turns[0][0] != "system":
            turns.insert(0, ("system", DEFAULT_SYSTEM))
        if tools:
            # SmolLM2's template has no tool syntax: the tool list and the call shape are
            # described in the system turn, and calls use the same JSON as Llama 3.1's.
            turns[0] = ("system", turns[0][1] + "\n\n" + tool_system_text(tools))
        segments: list[Segment] = []
        for role, text in turns:
            segments += [Segment(START, True), Segment(f"{role}\n{text}"), Segment(END, True)]
            segments.append(Segment("\n"))
        segments += [Segment(START, True), Segment("assistant\n")]
        return segments

    def _content(self, m: ChatMessage) -> str:
        if m.role == "assistant" and m.tool_calls:
            return self.tool_calls.format(m.tool_calls)
        return m.text
