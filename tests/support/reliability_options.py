"""Sizes of the reliability tests, as pytest options and environment variables.

The defaults fit a CI run on two CPU cores; the same tests run full size with larger numbers,
e.g. ``pytest tests/e2e/test_load.py --soak-requests 2000``. An option sets its environment
variable (read by the test modules), so either way works.
"""

from __future__ import annotations

import os

import pytest

__all__ = ["SIZES", "size"]

SIZES: dict[str, tuple[str, int, str]] = {
    "soak-requests": ("SOAK_REQUESTS", 120, "requests in the soak test"),
    "soak-concurrency": ("SOAK_CONCURRENCY", 8, "concurrent clients in the soak test"),
    "storm-clients": ("STORM_CLIENTS", 80, "clients that disconnect in the storm test"),
    "fuzz-examples": ("FUZZ_EXAMPLES", 40, "schemathesis examples per operation and mode"),
    "property-examples": ("PROPERTY_EXAMPLES", 40, "hypothesis requests per property test"),
}


def size(name: str) -> int:
    """The size ``name`` (a key of SIZES) from its environment variable, else the default."""
    env, default, _ = SIZES[name]
    return int(os.environ.get(env, default))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reliability", "sizes of the reliability tests")
    for name, (env, default, text) in SIZES.items():
        group.addoption(f"--{name}", type=int, default=None, help=f"{text} (${env}, {default})")


def pytest_configure(config: pytest.Config) -> None:
    for name, (env, _, _) in SIZES.items():
        value = config.getoption(name.replace("-", "_"), default=None)
        if value is not None:
            os.environ[env] = str(value)
