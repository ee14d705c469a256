"""Unit-test fixtures shared across modules."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def hf_tokenizer() -> Any:
    """Llama 3's tokenizer converted to a Hugging Face fast tokenizer (about 2 s, built once)."""
    from server.models.tiny import build_llama3_tokenizer

    return build_llama3_tokenizer()


@pytest.fixture(scope="session")
def meta_tokenizer() -> Any:
    """Meta's reference tiktoken tokenizer from llama-models."""
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer.get_instance()


@pytest.fixture(scope="session")
def smol_tokenizer() -> Any:
    """SmolLM2's tokenizer (49,152 tokens) from the model cache, converted first if needed."""
    from transformers import AutoTokenizer

    from tests.support.serverproc import model_dir

    return AutoTokenizer.from_pretrained(model_dir("smollm2-135m"))
