"""Request to constraint: what the engine must enforce, proven to compile in bounded time.

Use from the service (one :class:`GrammarCompiler` per model, started with the server)::

    constraint = build_constraint(request, backend="xgrammar", tool_call_format=LLAMA3_JSON)
    if constraint is not None:
        await compiler.check(constraint)  # sets constraint.structured_outputs, or SchemaError
        params.structured_outputs = constraint.structured_outputs

then check the content with ``constraint.validate(text)`` (None when valid) and each tool call
against ``constraint.call_schema`` with :func:`schema_validator`.
"""

from grammars.compiler import GrammarCompiler
from grammars.constraints import Constraint, ConstraintKind, build_constraint
from grammars.encode import BACKENDS
from grammars.limits import check_schema, schema_validator
from grammars.shape import LLAMA3_JSON, JsonToolCalls, Shape, ToolCallSyntax
from grammars.worker import CompileResult, WorkerStartError

__all__ = [
    "BACKENDS",
    "LLAMA3_JSON",
    "CompileResult",
    "Constraint",
    "ConstraintKind",
    "GrammarCompiler",
    "JsonToolCalls",
    "Shape",
    "ToolCallSyntax",
    "WorkerStartError",
    "build_constraint",
    "check_schema",
    "schema_validator",
]
