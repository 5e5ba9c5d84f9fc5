"""``aipaas audit query --end-user``: the raw id is hashed the same way serving stored it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from aipaas import audit
from aipaas.cli import app


@pytest.fixture
def settings(platform_settings):
    """Every test here that touches the platform database runs on SQLite and on PostgreSQL."""
    return platform_settings


def test_query_by_end_user_lists_only_that_users_records(settings, use_settings):
    use_settings(settings)
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    for rid, user in [("r1", "alice"), ("r2", "bob"), ("r3", None), ("r4", "alice")]:
        pseudonym = audit.end_user_pseudonym(settings, user) if user else None
        rec = audit.AuditRecord(
            request_id=rid, key_id="k1", route="/predict", status=200, end_user=pseudonym
        )
        writer.submit(rec).result(10)
    writer.close()

    result = CliRunner().invoke(app, ["audit", "query", "--end-user", "alice"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split("req=")[1].split()[0] for line in lines] == ["r1", "r4"]
    alice = audit.end_user_pseudonym(settings, "alice")
    assert all(f"user={alice[:12]}" in line for line in lines)

    as_json = CliRunner().invoke(app, ["audit", "query", "--end-user", "bob", "--json"])
    (bob,) = [json.loads(line) for line in as_json.output.splitlines()]
    assert bob["request_id"] == "r2" and bob["end_user"] == audit.end_user_pseudonym(
        settings, "bob"
    )
    none = CliRunner().invoke(app, ["audit", "query", "--end-user", "carol"])
    assert none.exit_code == 0 and none.output == ""
