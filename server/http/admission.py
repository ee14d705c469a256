"""Overload control: a bound on the requests each model holds at once.

vLLM queues whatever it is given, so under a burst the queue (and every client's wait) grows
without end. Here each model admits at most ``max_num_seqs`` running requests plus
``max_waiting_requests`` waiting ones; the next one gets 429 with ``Retry-After`` at once, which
the OpenAI and Cerebras SDKs retry after that many seconds. A request holds its slot from
admission until its response (or stream) has been sent in full.

The same counts give a cheap estimate of a new request's wait, for Cerebras's
``queue_threshold``: with ``held`` requests admitted and ``slots`` of them running, a new one
starts after ``held - slots + 1`` finish, and slots free up at ``slots`` per mean service
time (an average of recent requests' engine time, prompt plus completion). It counts every
admitted request as ahead (a flex request is behind all of them; higher tiers that arrive
later overtake it too) and knows nothing before the first request finishes (estimate 0).

With several API processes (``--api-processes``) the bound is the server's, not each
process's: every process publishes how many slots it holds in a shared array (vLLM's
``SharedAdmissionStats``: one slot per process, written only by its owner) and admits only
while the sum is below the limit. No lock: two processes admitting at the same instant may
each see the other's old count, so the bound can be passed by at most N - 1 requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vllm.v1.engine.admission_control import SharedAdmissionStats

from server.errors import OverloadedError
from server.models.pool import ServedModel

__all__ = ["RETRY_AFTER_SECONDS", "Admission", "Ticket"]

RETRY_AFTER_SECONDS = 1
"""What a 429 tells clients to wait: slots free up as fast as requests finish."""
SMOOTHING = 0.2
"""Weight of the latest request in the mean service time (an exponential moving average)."""


@dataclass
class Ticket:
    """One admitted request's slot; ``release`` may be called more than once."""

    admission: Admission | None
    model_id: str
    released: bool = field(default=False)

    def release(self) -> None:
        if not self.released and self.admission is not None:
            self.admission._release(self.model_id)
        self.released = True


class Admission:
    """Per-model admission counters in front of the engines (one event loop: no locks)."""

    def __init__(
        self,
        limits: dict[str, int],
        slots: dict[str, int] | None = None,
        shared: Mapping[str, SharedAdmissionStats] | None = None,
    ) -> None:
        """``slots``: requests each model's engine runs at once (max_num_seqs; default: its
        limit); ``shared``: each model's counts across API processes (none: this process
        alone)."""
        self.limits = dict(limits)
        self.slots = dict(slots) if slots is not None else dict(self.limits)
        """Requests the engine runs at once (max_num_seqs), per model."""
        self._held = dict.fromkeys(self.limits, 0)
        self._service_seconds: dict[str, float] = {}
        self._shared = dict(shared or {})

    @classmethod
    def for_models(
        cls,
        models: Iterable[ServedModel],
        max_waiting: int,
        shared: Mapping[str, SharedAdmissionStats] | None = None,
    ) -> Admission:
        """``max_num_seqs + max_waiting`` for each served model."""
        models = list(models)
        return cls(
            {m.id: m.config.max_num_seqs + max_waiting for m in models},
            {m.id: m.config.max_num_seqs for m in models},
            shared,
        )

    def held(self, model_id: str) -> int:
        """Slots held for ``model_id`` by this process."""
        return self._held.get(model_id, 0)

    def observe(self, model_id: str, seconds: float) -> None:
        """A finished request of ``model_id`` ran ``seconds`` in the engine."""
        if model_id not in self.limits:
            return
        mean = self._service_seconds.get(model_id)
        self._service_seconds[model_id] = (
            seconds if mean is None else mean + SMOOTHING * (seconds - mean)
        )

    def expected_wait(self, model_id: str) -> float:
        """Seconds a request admitted now would wait for a running slot (see the module)."""
        slots = self.slots.get(model_id, 0)
        ahead = self.held_by_all(model_id) - slots + 1
        if slots <= 0 or ahead <= 0:
            return 0.0
        return ahead * self._service_seconds.get(model_id, 0.0) / slots

    def held_by_all(self, model_id: str) -> int:
        """Slots held for ``model_id`` by every API process."""
        shared = self._shared.get(model_id)
        return self.held(model_id) if shared is None else shared.get_num_requests()

    def _publish(self, model_id: str) -> None:
        shared = self._shared.get(model_id)
        if shared is not None:
            shared.set_num_requests(self._held[model_id])

    def acquire(self, model_id: str) -> Ticket:
        """A slot for ``model_id``, or OverloadedError (429) when all are taken. Unknown
        models are not counted: the service answers them 404."""
        limit = self.limits.get(model_id)
        if limit is None:
            return Ticket(None, model_id)
        if self.held_by_all(model_id) >= limit:
            raise OverloadedError(
                f"The server is at capacity for '{model_id}' ({limit} requests running or "
                f"queued). Retry after {RETRY_AFTER_SECONDS} s.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self._held[model_id] += 1
        self._publish(model_id)
        return Ticket(self, model_id)

    def _release(self, model_id: str) -> None:
        self._held[model_id] -= 1
        self._publish(model_id)
