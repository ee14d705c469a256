"""Do, for one set of structured-output parameters, the work vLLM will do for it.

Runs inside the compile worker (:mod:`grammars.worker`). It uses vLLM's own code paths, so a
grammar that passes here is one the engine can build:

1. the frontend validation vLLM runs when a request arrives (``validate_*`` for the backend);
2. the engine backend's ``compile_grammar`` (for Outlines: building the ``outlines_core.Index``
   over the model's vocabulary; for XGrammar: ``GrammarCompiler``; for llguidance: the
   ``LLMatcher``), on a backend object made from the same tokenizer;
3. the first token mask, which the engine computes on its first decoding step.

The backends' own caches are cleared after each check: the worker keeps only the vocabulary,
and :class:`~grammars.compiler.GrammarCompiler` keeps the verdicts.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

__all__ = ["EngineCheck"]


class EngineCheck:
    """vLLM's structured-output backend for one tokenizer, outside the engine."""

    def __init__(self, backend: str, tokenizer: str, vocab_size: int | None = None) -> None:
        # The worker is killed from outside on timeout; vLLM's own thread-based regex timeout
        # (5 s by default) would only add a second, shorter limit and leave a thread running.
        os.environ["VLLM_REGEX_COMPILATION_TIMEOUT_S"] = "0"
        from vllm.config.structured_outputs import StructuredOutputsConfig
        from vllm.tokenizers import get_tokenizer

        self.name = backend
        self.tokenizer = get_tokenizer(tokenizer)
        config = SimpleNamespace(
            structured_outputs_config=StructuredOutputsConfig(
                backend=backend, disable_any_whitespace=backend != "outlines"
            ),
            speculative_config=None,
            model_config=SimpleNamespace(hf_config=SimpleNamespace(model_type="")),
        )
        size = vocab_size or len(self.tokenizer)
        self.backend = _backend_class(backend)(config, tokenizer=self.tokenizer, vocab_size=size)
        if backend == "outlines":
            self.backend.cache = {}  # never vLLM's on-disk cache, which other processes share
        self.bitmask = self.backend.allocate_token_bitmask(1)

    def check(self, params: Any) -> None:
        """Raise (any exception, with vLLM's message) if the engine could not use ``params``."""
        from vllm.sampling_params import SamplingParams
        from vllm.v1.structured_output.request import get_structured_output_key

        _validate(self.name, SamplingParams(structured_outputs=params))
        request_type, spec = get_structured_output_key(params)
        try:
            grammar = self.backend.compile_grammar(request_type, spec)
            grammar.fill_bitmask(self.bitmask, 0)
        finally:
            self._clear_caches()

    def _clear_caches(self) -> None:
        if self.name == "outlines":
            self.backend.cache.clear()
        elif self.name == "xgrammar":
            self.backend.compiler.clear_cache()


def _backend_class(name: str) -> type:
    if name == "outlines":
        from vllm.v1.structured_output.backend_outlines import OutlinesBackend

        return OutlinesBackend
    if name == "xgrammar":
        from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend

        return XgrammarBackend
    if name == "guidance":
        from vllm.v1.structured_output.backend_guidance import GuidanceBackend

        return GuidanceBackend
    raise ValueError(f"unknown structured-output backend {name!r}")


def _validate(name: str, params: Any) -> None:
    """vLLM's frontend checks for ``name`` (``SamplingParams._validate_structured_outputs``)."""
    from vllm.sampling_params import check_json_nesting

    so = params.structured_outputs
    check_json_nesting(so.json)
    check_json_nesting(so.structural_tag, structural_tag=True)
    if name == "outlines":
        from vllm.v1.structured_output.backend_outlines import (
            validate_structured_output_request_outlines,
        )

        validate_structured_output_request_outlines(params)
    elif name == "xgrammar":
        from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

        validate_xgrammar_grammar(params)
    else:
        from vllm.v1.structured_output.backend_guidance import validate_guidance_grammar

        validate_guidance_grammar(params, tokenizer=None)
