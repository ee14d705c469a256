"""vLLM's structured-output backends and everything in which they differ, in one table.

The engine runs one backend for all its requests (vLLM V1), chosen by the server's
``--structured-output-backend``; every other module asks :data:`BACKENDS` instead of testing
the backend's name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vllm.sampling_params import StructuredOutputsParams

from grammars import encode
from grammars.shape import Shape

__all__ = ["BACKENDS", "Backend", "backend"]


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    spell: Callable[[Shape], StructuredOutputsParams]
    """The shape in this backend's syntax (:mod:`grammars.encode`)."""
    parallel_calls: bool
    """Can enforce several tool calls in one answer (Outlines cannot: see grammars.encode)."""
    encodes_in_worker: bool
    """Spelling a shape for it can take unbounded time and memory (Outlines builds a regex from
    the schema), so it happens only in the compile worker, never in the server process."""
    compiles_in_worker: bool
    """Building its grammar is unbounded (Outlines' index over the vocabulary: seconds on a
    128k vocabulary, minutes or gigabytes for some schemas), so the compile worker builds it
    under a time and memory bound before the engine does. Otherwise a request's grammar is
    built once, by the engine, asynchronously and per request (vLLM V1 schedules a request only
    once its grammar is ready, so a slow one holds no other request); the server runs only
    vLLM's frontend ``validator`` (in-process, cheap) to turn a refusal into a 400 naming the
    field. llguidance bounds its own work: ``LLParserLimits`` (grammar size 500k symbols,
    initial lexer fuel 1M, 50k Earley items and 200k lexer fuel per token, 250k lexer states),
    and it builds lexer states lazily, per token."""
    engine_class: str
    """vLLM's backend class (``module:name``), which the compile worker runs outside the
    engine."""
    validator: str
    """vLLM's frontend check of a request's parameters for this backend (``module:name``)."""
    forget: Callable[[Any], None]
    """Drops the compiled grammars an ``engine_class`` object keeps: the compile worker keeps
    only the vocabulary, and the compiler keeps the verdicts."""
    engine_options: dict[str, Any] = field(default_factory=dict)
    """``structured_outputs_config`` options beside the backend's name, for the engine and the
    compile worker alike."""

    def encode(self, shape: Shape) -> StructuredOutputsParams:
        """vLLM's structured-output parameters that make this backend enforce ``shape``."""
        encode.check_shape(shape)
        return self.spell(shape)

    def load(self, attribute: str) -> Any:
        """``engine_class`` or ``validator``, imported (vLLM's backends import their
        grammar library, so only the chosen one is loaded)."""
        module, name = getattr(self, attribute).split(":")
        return getattr(importlib.import_module(module), name)


def _fresh_outlines_cache(engine_backend: Any) -> None:
    # Never vLLM's on-disk Outlines cache, which other processes share.
    engine_backend.cache = {}


_VLLM = "vllm.v1.structured_output"

BACKENDS: dict[str, Backend] = {
    "outlines": Backend(
        name="outlines",
        spell=encode.outlines,
        parallel_calls=False,
        encodes_in_worker=True,
        compiles_in_worker=True,
        engine_class=f"{_VLLM}.backend_outlines:OutlinesBackend",
        validator=f"{_VLLM}.backend_outlines:validate_structured_output_request_outlines",
        forget=_fresh_outlines_cache,
    ),
    "xgrammar": Backend(
        name="xgrammar",
        spell=encode.xgrammar,
        parallel_calls=True,
        encodes_in_worker=False,
        # XGrammar sets no bound of its own on a compile, and the engine runs its compiles
        # in one thread on a 2-core machine: the worker proves each fits the bound first.
        compiles_in_worker=True,
        engine_class=f"{_VLLM}.backend_xgrammar:XgrammarBackend",
        validator=f"{_VLLM}.backend_xgrammar:validate_xgrammar_grammar",
        forget=lambda engine_backend: engine_backend.compiler.clear_cache(),
        # vLLM 0.32 ignores the per-request flag; without this, xgrammar's JSON allows
        # unbounded whitespace and a constrained model can pad until max_tokens.
        engine_options={"disable_any_whitespace": True},
    ),
    "guidance": Backend(
        name="guidance",
        spell=encode.guidance,
        parallel_calls=True,
        encodes_in_worker=False,
        compiles_in_worker=False,
        engine_class=f"{_VLLM}.backend_guidance:GuidanceBackend",
        validator=f"{_VLLM}.backend_guidance:validate_guidance_grammar",
        forget=lambda engine_backend: None,  # llguidance keeps no cache of its own
    ),
}


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown structured-output backend {name!r}; expected one of {', '.join(BACKENDS)}"
        ) from None
