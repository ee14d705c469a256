"""Server settings: each has a default and a docstring; the CLI help and the environment
variables (``LLAMA_SERVE_<NAME>``) are built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLAMA_SERVE_", use_attribute_docstrings=True, extra="ignore"
    )

    model: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["smollm2-135m"])
    """Model to serve: a config name in configs/ or a YAML path. Repeat to serve several
    (environment: comma-separated)."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 in the Docker image)."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Port to listen on."""
    config: Path | None = None
    """A folder of model configs to use instead of the bundled configs/."""
    cache_dir: Path = Path("~/.cache/llama-serve").expanduser()
    """Where converted and built model folders are kept between starts."""
    structured_output_backend: Literal["outlines", "xgrammar", "guidance"] = "outlines"
    """The engine's constrained-decoding backend for JSON mode, schemas and tool calls."""
    grammar_timeout: float = Field(default=10.0, gt=0)
    """Seconds a schema may take to compile before the request gets a 400."""
    grammar_cache_size: int = Field(default=256, ge=0)
    """Compiled schemas remembered per model (in memory)."""
    eager: bool = False
    """Force every model's enforce_eager (no graph compilation): starts in seconds instead of
    a minute on CPU; the tests use it."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the server's own logs."""
    log_prompts: bool = False
    """Include prompt text in request logs (off: prompts may hold personal data)."""

    def model_list(self) -> list[str]:
        names: list[str] = []
        for item in self.model:
            names += [n.strip() for n in item.split(",") if n.strip()]
        return names
