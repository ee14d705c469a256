"""Request to constraint: what the engine must enforce, proven to compile in bounded time.

Use from the service (one :class:`GrammarCompiler` per model, started with the server)::

    constraint = build_constraint(request, backend="guidance", syntax=chat_format.tool_calls)
    if constraint is not None:
        await compiler.check(constraint)  # sets constraint.structured_outputs, or SchemaError
        params.structured_outputs = constraint.structured_outputs

then check the content with ``constraint.validate(text)`` (None when valid). Errors about a
request are :class:`GrammarError` subclasses naming the request field at fault.
"""

from grammars.backends import BACKENDS, Backend, backend
from grammars.compiler import GrammarCompiler
from grammars.constraints import Constraint, ConstraintKind, OutputRequest, build_constraint
from grammars.errors import (
    CompilerUnavailableError,
    GrammarError,
    RequestError,
    SchemaError,
    UnsupportedError,
)
from grammars.schema_checks import check_schema, check_strict, schema_validator
from grammars.shape import Shape, ToolCallSyntax
from grammars.worker import CompileResult, WorkerStartError

__all__ = [
    "BACKENDS",
    "Backend",
    "CompileResult",
    "CompilerUnavailableError",
    "Constraint",
    "ConstraintKind",
    "GrammarCompiler",
    "GrammarError",
    "OutputRequest",
    "RequestError",
    "SchemaError",
    "Shape",
    "ToolCallSyntax",
    "UnsupportedError",
    "WorkerStartError",
    "backend",
    "build_constraint",
    "check_schema",
    "check_strict",
    "schema_validator",
]
