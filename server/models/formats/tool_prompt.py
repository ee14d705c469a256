"""The tool-definition text shown to the model, shared by both chat formats.

The wording is Meta's JSON-based custom tool prompt for Llama 3.1 (``JsonCustomToolGenerator``
in llama-models, shown in ``llama_models/llama3_1/prompt_format.md``): an instruction, each
tool as indented JSON, then "Return function calls in JSON format." Meta's generator rewrites
each parameter to ``{"type": "object", "description": ...}`` because its tool type has no
JSON Schema; OpenAI tools do, so we show the tool exactly as the client sent it, in the same
``{"type": "function", "function": {...}}`` wrapper Meta uses.
"""

from __future__ import annotations

import json
from typing import Any

from server.chat.protocol import Tool

__all__ = ["TOOL_PROMPT_FOOTER", "TOOL_PROMPT_HEADER", "tool_definition", "tool_system_text"]

TOOL_PROMPT_HEADER = (
    "Answer the user's question by making use of the following functions if needed.\n"
    "If none of the function can be used, please say so.\n"
    "Here is a list of functions in JSON format:\n"
)
TOOL_PROMPT_FOOTER = "Return function calls in JSON format."


def tool_definition(tool: Tool) -> dict[str, Any]:
    """One tool as the model sees it; unset fields and OpenAI's ``strict`` are left out."""
    fn = tool.function
    function: dict[str, Any] = {"name": fn.name}
    if fn.description is not None:
        function["description"] = fn.description
    if fn.parameters is not None:
        function["parameters"] = fn.parameters
    return {"type": "function", "function": function}


def tool_system_text(tools: list[Tool]) -> str:
    """Meta's instruction with the definitions of ``tools``, one JSON object per tool."""
    # Meta's template ends each definition with a newline, then a blank line before the footer.
    definitions = "".join(
        json.dumps(tool_definition(t), indent=4, ensure_ascii=False) + "\n" for t in tools
    )
    return f"{TOOL_PROMPT_HEADER}{definitions}\n{TOOL_PROMPT_FOOTER}"
