"""Nothing in the repository points outside it: a clone anywhere runs and tests the same."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Built from parts, so that this file does not hold them itself.
SHARED = "shared"
FORBIDDEN = ("/".join(("", "work", SHARED)), "/".join(("..", SHARED)))
"""The absolute path of the shared data folder of the machine the project was built on, and a
relative path climbing out of the repository into it."""


def _tracked_files() -> list[Path]:
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in listing.decode().split("\0") if name]


def test_no_tracked_file_refers_to_the_shared_folder() -> None:
    files = _tracked_files()
    assert ROOT / "README.md" in files
    found = []
    for path in files:
        if not path.is_file():  # deleted in the work tree, not yet in the index
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary
            continue
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {p}" for p in FORBIDDEN if p in line]
    assert not found, "paths outside the repository:\n" + "\n".join(found)
