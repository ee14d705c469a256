"""API keys: where they come from and how a request's ``Authorization`` header is checked.

Keys come from ``--api-key`` (repeatable), ``LLAMA_SERVE_API_KEY`` (comma-separated) and
``--api-key-file`` (one a line). Every configured key is compared with ``hmac.compare_digest``
so that the time taken does not reveal how much of a guess was right, nor which key matched.
Logs and rate limits name a key by ``key_id``: a short hash, never the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ApiKeys", "key_id", "read_key_file"]


def key_id(key: str) -> str:
    """A stable, non-secret name for a key (first 12 hex digits of its SHA-256)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def read_key_file(path: Path) -> list[str]:
    """Keys one a line; blank lines and lines starting with '#' are skipped."""
    lines = Path(path).expanduser().read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class ApiKeys:
    """The accepted keys. Empty means authentication is off."""

    def __init__(self, keys: Iterable[str]) -> None:
        unique = dict.fromkeys(k for k in keys if k)
        self._keys = [(k.encode(), key_id(k)) for k in unique]

    @classmethod
    def from_settings(cls, settings: object) -> ApiKeys:
        keys = [k.get_secret_value() for k in getattr(settings, "api_key", [])]
        path = getattr(settings, "api_key_file", None)
        if path is not None:
            keys += read_key_file(path)
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def ids(self) -> list[str]:
        """Each key's ``key_id``, in the order the settings give them."""
        return [name for _, name in self._keys]

    def check(self, authorization: str | None) -> str | None:
        """The ``key_id`` of the key in an ``Authorization: Bearer <key>`` header, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = token.strip().encode()
        found = None
        for key, name in self._keys:  # no early exit: every key costs the same time
            if hmac.compare_digest(given, key):
                found = name
        return found
