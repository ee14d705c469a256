"""Request to constraint: what the engine must enforce, proven to compile in bounded time.

Use from the service::

    constraint = build_constraint(request, backend="xgrammar", tool_call_format=LLAMA3_JSON)
    if constraint is not None:
        constraint = await compiler.check(constraint)  # SchemaError (400) if it cannot be built
        params.structured_outputs = constraint.structured_outputs

then validate the output against ``constraint.schema`` / ``constraint.call_schema`` with
:func:`schema_validator`.
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
