"""The schema benchmark's end-to-end mode, small, against the session's running server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for

from benchmarks.schema_coverage import load_schemas
from benchmarks.schema_e2e import main
from tests.conftest import STRUCTURED_BACKENDS, backend_url

pytestmark = pytest.mark.e2e

COLUMNS = ["backend", "compiled", "p50 s", "p99 s", "sent", "200", "valid", "invalid", "truncated",
           "caught", "compile 400", "errors", "tok/s constr", "tok/s free", "ratio"]  # fmt: skip
STATUSES = ["valid", "invalid", "truncated", "caught", "compile", "error"]


@pytest.mark.parametrize("backend", STRUCTURED_BACKENDS)
def test_every_200_validates(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "e2e.json"
    smol_url = backend_url(request, "smol", backend)
    # One schema from each JSONSchemaBench file, on the session's server for that backend.
    argv = ["--base-url", smol_url, "--backend", backend, "--sample", "1", "--seed", "0",
            "--max-tokens", "256", "--request-timeout", "120",
            "--out", str(out), "--quiet"]  # fmt: skip
    code = main(argv)
    table = capsys.readouterr().out
    result = json.loads(out.read_text())["results"][backend]
    summary = result["e2e"]
    attempts = result["attempts"]

    assert code == 0, table
    assert len(attempts) == summary["sent"] == 4
    assert sum(summary[s] for s in STATUSES) == 4
    assert summary["invalid"] == summary["error"] == 0, table
    assert summary["ok"] == summary["valid"] >= 1, "no schema answered 200: nothing was checked"
    schemas = {(s.file, s.id): s.schema for s in load_schemas(sample=1, seed=0)}
    for a in attempts:
        if a["status"] == "valid":
            schema = schemas[a["file"], a["id"]]
            cls = validator_for(schema, default=Draft202012Validator)
            cls(schema).validate(json.loads(a["output"]))
            assert a["tokens"] > 0 and a["free_tokens"] > 0
    assert summary["tok_s"] > 0 and summary["free_tok_s"] > 0 and summary["ratio"] > 0
    assert result["compile"]["n"] == 4 and result["compile"]["p50_s"] is not None

    header, row = table.splitlines()[:2]
    assert header.split("  ")[0] == "backend"
    assert all(column in header for column in COLUMNS)
    assert row.startswith(backend)
