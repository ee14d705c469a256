"""The JSONSchemaBench sample kept in the repository, and the draws it stands in for."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks.schema_coverage import (
    DATA_DIR,
    FILES,
    MANIFEST,
    SampleError,
    add_sample_options,
    load_schemas,
    read_rows,
    sampled_schemas,
)
from benchmarks.schema_sample import draw_sample, write_full

ROOT = Path(__file__).resolve().parents[2]
FULL_SIZES = {"Glaiveai2K": 1707, "Github_trivial": 444, "Github_easy": 1943, "Github_medium": 1976}


def _ids(schemas: list) -> list[tuple[str, str]]:
    return [(s.file, s.id) for s in schemas]


def _full_copy(folder: Path, sizes: dict[str, int]) -> Path:
    folder.mkdir()
    for name, size in sizes.items():
        rows = [
            {"id": f"{name}-{i}", "schema": {"type": "object", "title": str(i)}}
            for i in range(size)
        ]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_a_sample_picks_what_its_full_copy_picks(tmp_path: Path) -> None:
    full = _full_copy(tmp_path / "full", dict(zip(FILES, (40, 12, 30, 50), strict=True)))
    sample = tmp_path / "sample"
    manifest = draw_sample(full, sample, max_sample=5)

    for k in range(1, 6):
        picked = load_schemas(sample, sample=k)
        assert picked == load_schemas(full, sample=k)
        assert len(picked) == 4 * k
    assert sum(f["kept"] for f in manifest["files"].values()) == len(load_schemas(sample)) < 132
    # Draws the sample does not hold stop, rather than quietly picking other schemas.
    for selection in ({"sample": 6}, {"sample": 3, "seed": 1}, {"sample": 3, "files": FILES[1:]}):
        with pytest.raises(SampleError, match="--data-dir with a full"):
            load_schemas(sample, **selection)
    with pytest.raises(ValueError, match="itself a sample"):
        draw_sample(sample, tmp_path / "again", max_sample=2)


def test_full_files_are_built_in_file_name_order(tmp_path: Path) -> None:
    for name in FILES:
        (tmp_path / "data" / name).mkdir(parents=True)
        for stem in ("o2", "o10", "o1"):
            (tmp_path / "data" / name / f"{stem}.json").write_text('{"type": "string",\n "x": "é"}')
    write_full(tmp_path, tmp_path / "out")
    lines = (tmp_path / "out" / "Github_easy.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["o1", "o10", "o2"]
    assert lines[0] == '{"id":"o1","schema":{"type":"string","x":"\\u00e9"}}'


def test_the_repository_sample() -> None:
    assert DATA_DIR.is_relative_to(ROOT)
    assert (DATA_DIR / "README.md").is_file()
    manifest = json.loads((DATA_DIR / MANIFEST).read_text())
    assert manifest["commit"] == "ba103c73756198dd9b149ddc7db7867da7a077f6"
    assert manifest["drawn"] == {"files": list(FILES), "samples": [1, 25], "seed": 0}
    size = 0
    for name in FILES:
        info, rows = manifest["files"][name], read_rows(DATA_DIR / f"{name}.jsonl")
        assert info["rows"] == FULL_SIZES[name] and info["kept"] == len(rows)
        positions = [row["index"] for row in rows]
        assert positions == sorted(set(positions)) and positions[-1] < info["rows"]
        size += (DATA_DIR / f"{name}.jsonl").stat().st_size
    assert size < 512 * 1024
    # The schemas the e2e test has always used (--sample 1 --seed 0 on the full set).
    assert _ids(load_schemas(sample=1)) == [
        ("Glaiveai2K", "calculate_area_fe414505"),
        ("Github_trivial", "o85875"),
        ("Github_easy", "o90809"),
        ("Github_medium", "o5359"),
    ]
    for k in (6, 8, 25):
        assert len(load_schemas(sample=k)) == 4 * k
    with pytest.raises(SampleError):
        load_schemas(sample=26)


def test_the_benchmarks_read_the_repository_sample_by_default() -> None:
    parser = argparse.ArgumentParser()
    add_sample_options(parser, sample=6)
    args = parser.parse_args([])
    assert args.data_dir == DATA_DIR
    assert _ids(sampled_schemas(args)) == _ids(load_schemas(sample=6))


def test_format_checks_follow_the_schemas_draft() -> None:
    """A zoned RFC 3339 time is no format violation for a 2020-12 schema (draft 3's ``time``,
    ``HH:MM:SS``, is not its check); a bad email is."""
    from benchmarks.schema_e2e import _format_ok

    time = {"type": "string", "format": "time"}
    assert _format_ok(time, '"20:00:00.000000000-01:00"')
    assert not _format_ok({"type": "string", "format": "email"}, '"not an email"')
    draft3 = {"$schema": "http://json-schema.org/draft-03/schema#", **time}
    assert _format_ok(draft3, '"20:00:00"') and not _format_ok(draft3, '"20:00:00Z"')
