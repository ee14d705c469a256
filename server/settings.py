"""Server settings: each has a default and a docstring; the CLI help and the environment
variables (``LLAMA_SERVE_<NAME>``) are built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
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
    structured_output_backend: Literal["outlines", "xgrammar", "guidance"] = "guidance"
    """The engine's constrained-decoding backend for JSON mode, schemas and tool calls
    (guidance is llguidance; see README "Choosing the structured-output backend")."""
    grammar_timeout: float = Field(default=10.0, gt=0)
    """Seconds a schema may take to compile before the request gets a 400."""
    grammar_cache_size: int = Field(default=256, ge=0)
    """Compiled schemas remembered per model (in memory)."""
    grammar_cache_mib: float = Field(default=64.0, ge=0)
    """At most this much grammar text remembered per model (one Outlines regex may be a
    mebibyte)."""
    eager: bool = False
    """Force every model's enforce_eager (no graph compilation): starts in seconds instead of
    a minute on CPU; the tests use it."""
    stream_interval: int | None = Field(default=None, ge=1, le=1024)
    """Tokens a streamed event carries at most, for every model (none: each model config's
    stream_interval, 1 unless set): the first token and the last go at once, the others in
    groups of this many, which saves the API processes' CPU per token at the cost of a
    lumpier stream (README "Benchmarks")."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the server's own logs."""
    log_prompts: bool = False
    """Include prompt text in request logs (off: prompts may hold personal data)."""

    # Operation: authentication, overload control, shutdown. See README "Operating it".
    api_key: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """An API key clients must send as 'Authorization: Bearer <key>'; repeat for several
    (environment: comma-separated). No key and no api_key_file: no authentication. Prefer the
    environment or api_key_file: flags are visible in the process list."""
    api_key_file: Path | None = None
    """A file of API keys, one a line ('#' comments and blank lines ignored), added to
    api_key."""
    metrics_public: bool = False
    """Serve /metrics without an API key (for a Prometheus that cannot send one)."""
    max_waiting_requests: int = Field(default=256, ge=0)
    """Requests per model that may wait beyond the engine's max_num_seqs running ones; more
    get 429 with Retry-After."""
    request_timeout: float = Field(default=600.0, gt=0)
    """Seconds a chat completion may take before it is aborted in the engine: 504, or an
    error event then [DONE] in a stream."""
    drain_timeout: float = Field(default=30.0, ge=0)
    """Seconds that in-flight requests (streams too) get to finish after SIGTERM before the
    server stops; new requests get 503 meanwhile."""
    api_processes: int = Field(default=1, ge=1, le=64)
    """API processes sharing each model's one engine core (vLLM's --api-server-count): each
    serves every route on the same port; admission limits, rate limits and /metrics are
    shared across them. 1: the API runs in this process."""
    rate_limit_requests_per_day: int | None = Field(default=None, ge=1)
    """Chat completions per API key per UTC day (none: unlimited); over it, 429. Adds
    Cerebras's x-ratelimit-*-requests-day headers."""
    rate_limit_tokens_per_minute: int | None = Field(default=None, ge=1)
    """Prompt plus completion tokens per API key per minute (none: unlimited); once used up,
    429 until the minute ends. Adds Cerebras's x-ratelimit-*-tokens-minute headers."""
    rate_limit_uncached_tokens_per_minute: int | None = Field(default=None, ge=1)
    """Uncached tokens per API key per minute (none: unlimited): prompt tokens the prefix
    cache did not hold, plus completion tokens, as Cerebras counts them beside the total;
    once used up, 429 until the minute ends. Adds x-ratelimit-*-uncached-tokens-minute
    headers."""

    # Request limits, checked before parsing (server/http/request_limits.py). See README "Limits".
    max_request_bytes: int = Field(default=4 * 2**20, ge=1024)
    """Largest request body in bytes (default 4 MiB); a larger one gets 413."""
    max_header_bytes: int = Field(default=64 * 2**10, ge=1024)
    """Largest total size of the request headers in bytes (default 64 KiB); more gets 431."""
    max_json_depth: int = Field(default=64, ge=8, le=512)
    """Deepest nesting of arrays and objects in a JSON body; deeper gets 400."""
    max_json_containers: int = Field(default=100_000, ge=1000)
    """Most arrays and objects in a JSON body; more gets 400 (each costs the parser, which
    holds the GIL, an allocation the garbage collector walks)."""
    body_timeout: float = Field(default=30.0, gt=0)
    """Seconds a client may take to send the request body; slower gets 408."""

    @field_validator("model", "api_key", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """The environment gives one string: 'a,b' is two items."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def model_list(self) -> list[str]:
        names: list[str] = []
        for item in self.model:
            names += [n.strip() for n in item.split(",") if n.strip()]
        return names
