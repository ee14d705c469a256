"""``llama3.1-tiny``: Llama 3.1's real tokenizer on a tiny random-weight Llama 3.1 network.

It exists so the whole stack (prompt format, stop tokens, tool calls, streaming, usage
counts) runs end to end on a CPU in seconds with the exact vocabulary of the real models.
Everything is built locally: the tokenizer from the tiktoken file shipped in ``llama-models``
(no Hugging Face download), the weights from a fixed seed. The output is noise.

Usage: ``python -m server.models.tiny DEST``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

__all__ = [
    "EOS_TOKEN_IDS",
    "SEED",
    "TINY_DIMENSIONS",
    "build_llama3_tokenizer",
    "build_tiny_model",
    "llama31_config",
]

SEED = 0
VOCAB_SIZE = 128256
BOS_TOKEN_ID = 128000
EOS_TOKEN_IDS = [128001, 128008, 128009]
"""``<|end_of_text|>``, ``<|eom_id|>``, ``<|eot_id|>``: as in Llama 3.1 Instruct."""

TINY_DIMENSIONS = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_hidden_layers": 2,
}
"""head_dim = 128 / 2 = 64: vLLM's CPU attention rejects smaller heads (16 fails)."""


def llama31_config(**dimensions: int) -> dict[str, Any]:
    """A Llama 3.1 Instruct ``config.json`` (Meta's published fields and values) with the
    given sizes; without arguments, the 8B model."""
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": list(EOS_TOKEN_IDS),
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.42.3",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }
    unknown = set(dimensions) - set(config)
    if unknown:
        raise ValueError(f"not Llama config fields: {', '.join(sorted(unknown))}")
    config.update(dimensions)
    return config


def build_llama3_tokenizer() -> Any:
    """Llama 3's tokenizer as a Hugging Face fast tokenizer, converted from Meta's tiktoken file.

    Special tokens take ids 128000..128255 with the names of Meta's ``Tokenizer``. The split
    pattern is the converter's default, which is Llama 3's. Returns a
    ``PreTrainedTokenizerFast``.
    """
    # transformers and llama_models take seconds to import: only when a model is built.
    from llama_models.llama3 import tokenizer as meta_module
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    meta = meta_module.Tokenizer.get_instance()
    specials = sorted(meta.special_tokens, key=meta.special_tokens.__getitem__)
    # `extra_special_tokens` is the keyword the converter reads; any other is silently ignored
    # and leaves a 128,002-token vocabulary, hence the size check below.
    converter = TikTokenConverter(
        vocab_file=str(Path(meta_module.__file__).parent / "tokenizer.model"),
        extra_special_tokens=specials,
    )
    backend = converter.converted()
    # Like Meta's Hugging Face tokenizer: encode() prepends <|begin_of_text|> by default.
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                special_tokens=[("<|begin_of_text|>", BOS_TOKEN_ID)],
            ),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        model_max_length=131072,
        # Meta's repo sets True, which rewrites " ." as "." when decoding; we want exact text.
        clean_up_tokenization_spaces=False,
    )
    if len(tokenizer) != VOCAB_SIZE or tokenizer.convert_tokens_to_ids(specials) != list(
        range(BOS_TOKEN_ID, VOCAB_SIZE)
    ):
        raise RuntimeError(
            f"tokenizer conversion gave {len(tokenizer)} tokens, expected {VOCAB_SIZE} with "
            "special tokens at 128000..128255"
        )
    return tokenizer


def build_tiny_model(dest: Path) -> None:
    """Write the ``llama3.1-tiny`` Hugging Face folder (config, tokenizer, safetensors, card)."""
    # torch and transformers take seconds to import: only when a model is built.
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    dest.mkdir(parents=True, exist_ok=True)
    build_llama3_tokenizer().save_pretrained(dest)

    config = llama31_config(**TINY_DIMENSIONS)
    torch.manual_seed(SEED)
    # deepcopy: transformers writes rope_theta into the nested rope_scaling dict it is given.
    model = LlamaForCausalLM(LlamaConfig.from_dict(copy.deepcopy(config))).to(torch.bfloat16)
    tensors = {name: t.contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})

    # A config without transformers_version makes transformers 5 suspect a Mistral tokenizer.
    config["transformers_version"] = transformers.__version__
    config["weights_are_random"] = True
    config["notice"] = (
        f"RANDOM WEIGHTS (torch.manual_seed({SEED})): this model produces noise. It exists to "
        "test serving code with Llama 3.1's real tokenizer and architecture."
    )
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": list(EOS_TOKEN_IDS)}
    (dest / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (dest / "README.md").write_text(_model_card(config))


def _model_card(config: dict[str, Any]) -> str:
    dims = ", ".join(f"{k} {config[k]}" for k in TINY_DIMENSIONS)
    return f"""---
license: llama3.1
tags: [llama, test-model, random-weights]
---
# llama3.1-tiny (random weights)

**The weights are random** (`torch.manual_seed({SEED})`, bf16). This model produces noise and
must not be used for anything but testing.

- Tokenizer: Meta's Llama 3 tokenizer (`llama_models/llama3/tokenizer.model`, 128,000 BPE
  tokens plus 256 special tokens at ids 128000..128255), converted locally with transformers'
  `TikTokenConverter`; it encodes exactly like `llama_models.llama3.tokenizer.Tokenizer`.
- Architecture: `LlamaForCausalLM` as in Llama 3.1 (vocabulary 128256, llama3 RoPE scaling,
  rope_theta 500000, end tokens {EOS_TOKEN_IDS}) at a tiny size: {dims}.
- Built by `python -m server.models.tiny DEST` in this repository.

The tokenizer is subject to the Llama 3.1 Community License.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to write the model into")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    build_tiny_model(args.dest)
    print(f"wrote {args.dest} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
