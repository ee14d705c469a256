"""``python -m server.healthcheck``: exit 0 when this machine's server answers /health with 200.

The Docker image's ``HEALTHCHECK`` runs it (no curl in the image needed). It asks the port in
``LLAMA_SERVE_PORT`` (the image sets 8000), so change the port with that variable rather than
``--port`` when a health check should follow it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

__all__ = ["main"]


def main() -> int:
    port = os.environ.get("LLAMA_SERVE_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
