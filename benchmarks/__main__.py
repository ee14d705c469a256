"""``python -m benchmarks`` entry point; the argument parsing lives in :mod:`benchmarks.cli`."""

import sys

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
