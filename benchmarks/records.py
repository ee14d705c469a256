"""What one request produced, as plain data, so that metrics stay pure and testable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RequestRecord"]


@dataclass
class RequestRecord:
    """Timings and outcome of one Chat Completions request.

    Times are seconds from :func:`time.perf_counter`. A request is *completed* when the server
    answered HTTP 200 and produced no error event; ``invalid`` then says whether the content
    failed the scenario's check (JSON mode, tool calls) without making it a failure: the server
    did the work, so it counts for throughput, but never for goodput.
    """

    index: int
    """Position in the run; picks the prompt."""
    start: float = 0.0
    """When the request was sent, relative to the start of the run."""
    status: int | None = None
    """HTTP status, or ``None`` when no response arrived (timeout, connection error)."""
    error: str | None = None
    """Error class: ``http_<status>``, ``failed_generation``, ``stream_error``, ``timeout``,
    ``connection``; ``None`` when the request completed."""
    error_message: str = ""
    """First 300 characters of the error, for the JSON result."""
    invalid: str | None = None
    """Why a completed output fails the scenario check (``json_parse``, ``args_schema``...)."""
    ttft: float | None = None
    """Time to the first chunk that carries generated content; streaming only."""
    latency: float | None = None
    """End-to-end latency: until the response (or stream) ended."""
    last_token: float | None = None
    """Time of the last content chunk (streaming); TPOT runs from ``ttft`` to here."""
    itls: list[float] = field(default_factory=list)
    """Gaps between consecutive content chunks (streaming)."""
    output_tokens: int = 0
    """``usage.completion_tokens``, else the number of content chunks."""
    prompt_tokens: int | None = None
    """``usage.prompt_tokens`` as reported by the server."""
    expected_prompt_tokens: int | None = None
    """Prompt length the client's tokenizer predicts for the rendered chat prompt."""
    finish_reason: str | None = None
    time_info: dict[str, float] | None = None
    """Cerebras's server-side ``time_info`` (seconds) when the response carries it."""

    @property
    def completed(self) -> bool:
        """HTTP 200 and no error event: the server produced an answer."""
        return self.error is None and self.status == 200

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first (vLLM's definition), or ``None``."""
        if self.ttft is None or self.last_token is None or self.output_tokens < 2:
            return None
        return (self.last_token - self.ttft) / (self.output_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the derived TPOT."""
        return {**asdict(self), "tpot": self.tpot}
