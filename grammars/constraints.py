"""Turn a Chat Completions request into the constraint the engine must enforce.

:func:`build_constraint` is pure and cheap: it validates the client's schemas (size, depth,
references, meta-schema; :mod:`grammars.schema_checks`) and decides the
:class:`~grammars.shape.Shape` of the output. It does not build the backend's grammar: for
Outlines that can take unbounded time and memory, so :class:`~grammars.compiler.GrammarCompiler`
does it in its worker process and returns the constraint with ``structured_outputs`` filled in.

Decisions, in the order they are taken:

* ``tool_choice`` ``required`` or a named function without ``tools``: RequestError naming
  tool_choice; a named function that is not in ``tools``: the same.
* Tools are only enforced when ``tool_choice`` is not ``none``; every tool's ``parameters``
  schema is validated whenever tools are sent (SchemaError naming tools and the tool).
* A forced call (``required`` or named) with a JSON ``response_format``: UnsupportedError,
  the two conflict.
* ``required``: one call to any tool, or several joined by the format's separator unless
  ``parallel_tool_calls`` is false or the backend cannot enforce that (Outlines, see
  :mod:`grammars.encode`). A named function: exactly one call to it.
* ``auto``: non-empty free text that does not start with ``{``, or the calls as for
  ``required``; with a JSON ``response_format`` the content must match it instead.
* ``json_schema`` without a ``schema`` is treated as ``json_object``. Every schema is enforced,
  and one that cannot be is refused; ``strict: true`` (``response_format.json_schema`` or a
  tool's ``function``) adds OpenAI's strict-mode rules (:func:`~grammars.check_strict`).
* Objects that say nothing about keys beyond their ``properties`` get none
  (:func:`~grammars.shape.closed`): a subset of what the schema allows, which small models
  finish within an ordinary ``max_tokens``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from jsonschema.exceptions import best_match
from vllm.sampling_params import StructuredOutputsParams

from grammars.backends import backend as backend_named
from grammars.errors import RequestError, UnsupportedError
from grammars.schema_checks import check_schema, check_strict, schema_validator
from grammars.shape import EMPTY_PARAMETERS, Shape, ToolCallSyntax, call_schema, closed

__all__ = ["Constraint", "ConstraintKind", "OutputRequest", "build_constraint"]


# What build_constraint reads of a request: the server's Chat Completions request has these
# fields (and so may any other request model), without grammars importing the server.


class _JsonSchemaFormat(Protocol):
    @property
    def schema_(self) -> dict[str, Any] | None: ...
    @property
    def strict(self) -> bool | None: ...


class ResponseFormatSpec(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def json_schema(self) -> _JsonSchemaFormat | None: ...


class _FunctionSpec(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def parameters(self) -> dict[str, Any] | None: ...
    @property
    def strict(self) -> bool | None: ...


class ToolSpec(Protocol):
    @property
    def function(self) -> _FunctionSpec: ...


class _NamedFunction(Protocol):
    @property
    def name(self) -> str: ...


class NamedChoiceSpec(Protocol):
    @property
    def function(self) -> _NamedFunction: ...


class OutputRequest(Protocol):
    @property
    def response_format(self) -> ResponseFormatSpec | None: ...
    @property
    def tools(self) -> Sequence[ToolSpec] | None: ...
    @property
    def effective_tool_choice(self) -> str | NamedChoiceSpec:
        """``none``, ``auto``, ``required`` or a named function."""
        ...

    @property
    def parallel_tool_calls(self) -> bool | None: ...


ConstraintKind = Literal["json_object", "json_schema", "tool_call", "tool_auto"]

_ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass
class Constraint:
    """What the engine must enforce on one request, and what to validate the output against."""

    kind: ConstraintKind
    """``json_object`` / ``json_schema``: the content is JSON; ``tool_call``: a call is forced;
    ``tool_auto``: content (free text, or JSON if response_format asks) or calls."""
    param: str
    """The request field that errors about this constraint name."""
    shape: Shape
    backend: str
    """The engine's structured-output backend (``outlines``, ``xgrammar`` or ``guidance``)."""
    structured_outputs: StructuredOutputsParams | None = None
    client_schema: dict[str, Any] | None = None
    """The content schema as the client sent it (the shape's is the enforced, closed one):
    outputs are validated against this."""
    """The engine parameters. Set by :meth:`GrammarCompiler.check` once they compile in time;
    also by :func:`build_constraint` where the backend's encoding is a cheap ``json.dumps``
    (not ``encodes_in_worker``: Outlines' regex must be built in the worker)."""

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON Schema the message content must validate against; None for free text."""
        if self.shape.content == "object":
            return _ANY_OBJECT
        return self.client_schema or self.shape.content_schema

    @property
    def call_schema(self) -> dict[str, Any] | None:
        """The JSON Schema each tool call (``{"name": ..., "parameters": ...}``) must match."""
        return self.shape.call_schema

    def validate(self, text: str) -> str | None:
        """Why ``text`` is not valid content under this constraint, or None if it is.

        Free text (``tool_auto`` without response_format) is always valid; tool calls are
        checked by the tool-call parser against each tool's own schema.
        """
        schema = self.schema
        if schema is None:
            return None
        try:
            value = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            return "the JSON nests too deeply to check"
        except ValueError as exc:
            return f"not valid JSON ({exc})"
        error = best_match(schema_validator(schema).iter_errors(value))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        return f"{error.message} (at {where})"


def build_constraint(
    request: OutputRequest, *, backend: str, syntax: ToolCallSyntax
) -> Constraint | None:
    """The constraint ``request`` needs, or None when its output is unconstrained text.

    ``syntax`` is how the model writes tool calls (its chat format's).
    """
    spec = backend_named(backend)
    content, client_schema = _content(request.response_format)
    content_schema = closed(client_schema) if client_schema is not None else None
    choice = request.effective_tool_choice
    tools = request.tools or []
    if choice != "none" and choice != "auto" and not tools:
        raise RequestError("tool_choice requires tools", param="tool_choice")
    parameters = {t.function.name: _parameters(t) for t in tools}

    if choice == "none" or not tools:
        if content == "text":
            return None
        kind: ConstraintKind = "json_object" if content == "object" else "json_schema"
        shape = Shape(content, content_schema)
        return _constraint(kind, "response_format", shape, backend, client_schema)

    forced = choice != "auto"
    if not isinstance(choice, str):  # a named function
        name = choice.function.name
        if name not in parameters:
            raise RequestError(
                f"tool_choice names function {name!r}, which is not in tools", param="tool_choice"
            )
        parameters = {name: parameters[name]}
    if forced and content != "text":
        raise UnsupportedError(
            "response_format cannot be combined with a tool_choice that forces a tool call "
            "(required or a named function): the output cannot be both",
            param="response_format",
        )
    calls = call_schema(parameters, syntax)
    check_schema(calls, param="tools", what="the tool-call schema built from tools")
    shape = Shape(
        content="none" if forced else content,
        content_schema=content_schema,
        call_schema=calls,
        multiple_calls=request.parallel_tool_calls is not False
        and isinstance(choice, str)
        and spec.parallel_calls,
        separator=syntax.separator,
    )
    kind = "tool_call" if forced else "tool_auto"
    return _constraint(kind, "tools", shape, backend, client_schema)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python accepts NaN and Infinity; clients do not


def _constraint(
    kind: ConstraintKind,
    param: str,
    shape: Shape,
    backend: str,
    client_schema: dict[str, Any] | None = None,
) -> Constraint:
    spec = backend_named(backend)
    params = None if spec.encodes_in_worker else spec.encode(shape)
    return Constraint(kind, param, shape, backend, params, client_schema)


def _content(
    response_format: ResponseFormatSpec | None,
) -> tuple[Literal["text", "object", "schema"], dict[str, Any] | None]:
    if response_format is None or response_format.type == "text":
        return "text", None
    schema = response_format.json_schema.schema_ if response_format.json_schema else None
    if response_format.type == "json_object" or schema is None:
        return "object", None
    what = "response_format.json_schema.schema"
    check_schema(schema, param="response_format", what=what)
    if response_format.json_schema and response_format.json_schema.strict:
        check_strict(schema, param="response_format", what=what)
    return "schema", schema


def _parameters(tool: ToolSpec) -> dict[str, Any]:
    params = tool.function.parameters
    if params is None:
        return EMPTY_PARAMETERS
    what = f"the parameters of tool {tool.function.name!r}"
    check_schema(params, param="tools", what=what)
    if tool.function.strict:
        check_strict(params, param="tools", what=what)
    return closed(params)
