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

from vllm.config.structured_outputs import StructuredOutputsConfig
from vllm.sampling_params import SamplingParams, StructuredOutputsParams, check_json_nesting
from vllm.tokenizers import get_tokenizer
from vllm.v1.structured_output.request import get_structured_output_key

from grammars.backends import backend

__all__ = ["EngineCheck", "frontend_check"]


def frontend_check(name: str, params: StructuredOutputsParams) -> None:
    """vLLM's checks when a request arrives (nesting, then the backend's ``validator``): raise
    (any exception, with vLLM's message) if the engine would refuse ``params``. Bounded for
    the backends whose grammars are not built in the worker (see
    :attr:`grammars.backends.Backend.compiles_in_worker`)."""
    check_json_nesting(params.json)
    check_json_nesting(params.structural_tag, structural_tag=True)
    backend(name).load("validator")(SamplingParams(structured_outputs=params))


class EngineCheck:
    """vLLM's structured-output backend for one tokenizer, outside the engine."""

    def __init__(self, name: str, tokenizer: str, vocab_size: int | None = None) -> None:
        # The worker is killed from outside on timeout; vLLM's own thread-based regex timeout
        # (5 s by default) would only add a second, shorter limit and leave a thread running.
        os.environ["VLLM_REGEX_COMPILATION_TIMEOUT_S"] = "0"
        self.spec = backend(name)
        self.tokenizer = get_tokenizer(tokenizer)
        config = SimpleNamespace(
            structured_outputs_config=StructuredOutputsConfig(
                backend=name, **self.spec.engine_options
            ),
            speculative_config=None,
            model_config=SimpleNamespace(hf_config=SimpleNamespace(model_type="")),
        )
        size = vocab_size or len(self.tokenizer)
        engine_class = self.spec.load("engine_class")
        self.backend = engine_class(config, tokenizer=self.tokenizer, vocab_size=size)
        self.spec.forget(self.backend)
        self.bitmask = self.backend.allocate_token_bitmask(1)

    def check(self, params: StructuredOutputsParams) -> None:
        """Raise (any exception, with vLLM's message) if the engine could not use ``params``."""
        frontend_check(self.spec.name, params)
        request_type, spec = get_structured_output_key(params)
        try:
            grammar = self.backend.compile_grammar(request_type, spec)
            grammar.fill_bitmask(self.bitmask, 0)
        finally:
            self.spec.forget(self.backend)
