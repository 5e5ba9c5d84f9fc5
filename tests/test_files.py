"""aipaas.files: a reader sees the old content or the new, and a torn history line is skipped."""

from __future__ import annotations

from pathlib import Path

from aipaas import files


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "state.json"
    files.atomic_write_json(target, {"seq": 1})
    files.atomic_write_json(target, {"seq": 2})
    assert files.read_json(target) == {"seq": 2}
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_read_json_of_a_missing_file_is_the_default(tmp_path: Path) -> None:
    assert files.read_json(tmp_path / "nope.json", default={}) == {}


def test_jsonl_appends_in_order_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    log = tmp_path / "history.jsonl"
    files.append_jsonl(log, {"n": 1})
    files.append_jsonl(log, {"n": 2}, fsync=True)
    with log.open("a") as fh:
        fh.write('{"n": 3, "cut off by a cra')
    assert files.read_jsonl(log) == [{"n": 1}, {"n": 2}]
    assert files.read_jsonl(tmp_path / "never-written.jsonl") == []
