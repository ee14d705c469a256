"""Llama 3.1 Instruct: ``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``.

Rendered in our own code and checked token for token against Meta's reference encoder
(``llama_models.llama3.chat_format.ChatFormat.encode_dialog_prompt``). The prompt is laid out
as Meta's reference stack lays it out for JSON-based custom tools (``prompt_format.md``):

1. one system turn: ``Environment: ipython`` when tools are given, Meta's knowledge-cutoff and
   date lines, then the client's first system (or developer) message, if any;
2. with tools, a user turn holding the tool instructions and definitions (``tool_prompt``);
3. the remaining messages in order; later system or developer messages stay system turns.

How OpenAI messages map onto Meta's ``RawMessage`` (the mapping the reference test uses):

- ``system`` and ``developer`` -> ``system``; ``user`` -> ``user``.
- ``tool`` -> Meta's ``tool`` role, whose header is ``ipython``; the content is the tool result
  as sent (``tool_call_id`` and ``name`` are not rendered: Llama 3.1 has no place for them).
- ``assistant`` -> ``assistant`` with ``stop_reason=end_of_turn`` (so ``<|eot_id|>``); each
  ``tool_calls`` entry -> Meta's ``ToolCall(tool_name=name, arguments=json.loads(arguments))``,
  which Meta writes after the content as ``{"type": "function", "name": ..., "parameters":
  ...}``, several calls back to back (``JsonToolCalls.format``).

Meta's encoder does not strip content (the Hugging Face Jinja template does), so neither do we.
One deliberate difference: Meta turns a call to a tool *named* ``brave_search``,
``wolfram_alpha``, ``photogen`` or ``code_interpreter`` into its built-in tool syntax; OpenAI
tools are always custom functions here, so such names are rendered as JSON like any other.

Each piece Meta encodes separately (role, ``\\n\\n``, content, each call) is its own segment,
because BPE merges differ across boundaries; that keeps the token ids identical to Meta's.
"""

from __future__ import annotations

from server.chat.protocol import ChatMessage, Tool
from server.models.formats.base import ChatFormat, Segment
from server.models.formats.tool_calls import LLAMA3_JSON
from server.models.formats.tool_prompt import tool_system_text

__all__ = ["DEFAULT_TODAY", "Llama3"]

BEGIN, START, END = "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>"
EOT = "<|eot_id|>"
DEFAULT_TODAY = "26 July 2024"
"""A fixed date (Llama 3.1's release) keeps prompts, usage counts and prefix caching
reproducible; Meta's stack writes the current date in the same ``%d %B %Y`` form."""

_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "ipython",
}


class Llama3(ChatFormat):
    name = "llama3"
    stop_tokens = (EOT, "<|eom_id|>", "<|end_of_text|>")
    tool_calls = LLAMA3_JSON

    def __init__(self, today: str = DEFAULT_TODAY) -> None:
        self.today = today

    def system_text(self, system: str, tools: bool) -> str:
        """Meta's system preamble (``BuiltinToolGenerator`` + ``SystemDefaultGenerator``)
        followed by the client's system message."""
        environment = "Environment: ipython\n\n" if tools else ""
        return (
            f"{environment}Cutting Knowledge Date: December 2023\n"
            f"Today Date: {self.today}\n\n{system}"
        )

    def render(self, messages: list[ChatMessage], tools: list[Tool] | None) -> list[Segment]:
        rest = list(messages)
        system = rest.pop(0).text if rest and rest[0].role in ("system", "developer") else ""
        segments = [Segment(BEGIN, True)]
        segments += _turn("system", [self.system_text(system, bool(tools))])
        if tools:
            segments += _turn("user", [tool_system_text(tools)])
        for m in rest:
            parts = [m.text]
            if m.role == "assistant" and m.tool_calls:
                parts += [self.tool_calls.format([call]) for call in m.tool_calls]
            segments += _turn(_ROLES[m.role], parts)
        segments += _header("assistant")
        return segments


def _header(role: str) -> list[Segment]:
    return [Segment(START, True), Segment(role), Segment(END, True), Segment("\n\n")]


def _turn(role: str, parts: list[str]) -> list[Segment]:
    return [*_header(role), *(Segment(p) for p in parts), Segment(EOT, True)]
