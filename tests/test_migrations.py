"""Alembic migrations of the platform database, on SQLite and on a real PostgreSQL.

The migrated schema must be exactly ``aipaas.db.metadata`` (what the code
reads and writes); a database at an older revision is upgraded, one at a
revision newer than this aipaas knows is refused, and processes that start
together upgrade once without harm.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from typer.testing import CliRunner

from aipaas import audit, db
from aipaas.cli import app
from aipaas.exceptions import SchemaVersionError
from tests.conftest import settings_env
from tests.support.postgres import execute

# Revision 0003: what processes and hosts must agree on (aipaas/coordination.py).
COORDINATION = {
    "drift_checks", "drift_state", "retrain_starts", "retrain_history", "retrain_exports",
    "champion_signals", "legacy_imports",
}  # fmt: skip
# Revision 0004: what the notifier found and sent (aipaas/ops/notify.py).
NOTIFY = {"notify_cursors", "notify_events", "notify_deliveries"}
# Revision 0005: shadow releases (aipaas/training/canary.py).
SHADOW = {"shadow_outputs"}
# Revision 0006: rate limits across hosts (aipaas/inference/ratelimit.py).
RATES = {"rate_buckets"}


@pytest.fixture
def settings(platform_settings):
    return platform_settings


def _diff(settings) -> list:
    eng = create_engine(settings.db_url)
    with eng.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
    eng.dispose()
    return diff


def _migrate_to(settings, revision: str) -> None:
    """Migrate with Alembic's own command to ``revision``, as an older aipaas would have."""
    eng = create_engine(settings.db_url)
    with eng.begin() as conn:
        command.upgrade(db._alembic_config(conn, settings), revision)
    eng.dispose()


def test_the_migrated_schema_is_exactly_the_one_the_code_uses(settings):
    assert db.current(settings) is None
    assert db.upgrade(settings) == db.head_revision() == "0006"
    assert db.current(settings) == "0006"
    assert _diff(settings) == []


def test_a_database_at_an_older_revision_is_upgraded_and_its_head_anchored(settings):
    _migrate_to(settings, "0001")
    assert db.current(settings) == "0001"
    assert {d[1].name for d in _diff(settings) if d[0] == "add_table"} == {
        "audit_head",
        *COORDINATION,
        *NOTIFY,
        *SHADOW,
        *RATES,
    }
    # Records written at 0001 (by the writer of that release: no head row).
    key = audit.chain_key(settings)
    prev = audit.GENESIS
    for seq in (1, 2):
        row = {name: None for name in audit.HASHED_FIELDS}
        row |= {"seq": seq, "ts": audit.utc_now(), "kind": "admin", "prev_hash": prev}
        row["hash"] = prev = audit.record_hash(key, row)
        cols = ", ".join(row)
        marks = ", ".join("?" * len(row))
        eng = create_engine(settings.db_url)
        with eng.begin() as conn:
            sql = f"INSERT INTO audit_log ({cols}) VALUES ({marks})"
            if eng.dialect.name != "sqlite":
                sql = sql.replace("?", "%s")
            conn.exec_driver_sql(sql, tuple(row.values()))
        eng.dispose()

    assert db.upgrade(settings) == "0006"
    assert _diff(settings) == []
    report = audit.verify(settings)
    assert report.ok and report.records == 2, report.problems
    execute(settings, "DELETE FROM audit_log WHERE seq = 2")  # the anchor now catches a cut
    assert any("2..2 are missing at the end" in p for p in audit.verify(settings).problems)


def test_a_database_from_a_newer_aipaas_is_refused_naming_both_revisions(settings, use_settings):
    db.upgrade(settings)
    execute(settings, "UPDATE alembic_version SET version_num = '0099'")
    db.dispose(settings)
    with pytest.raises(SchemaVersionError, match=r"revision 0099.*newest is 0006.*upgrade aipaas"):
        db.engine(settings)
    with pytest.raises(SchemaVersionError) as raised:
        audit.verify(settings)  # anything that opens the database
    assert (raised.value.found, raised.value.known, raised.value.exit_code) == ("0099", "0006", 19)

    use_settings(settings)
    result = CliRunner().invoke(app, ["db", "current"])
    assert result.exit_code == 0, result.output
    assert "revision 0099; this aipaas: 0006 (migrated by a newer aipaas: upgrade aipaas)" in (
        result.output
    )
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert isinstance(result.exception, SchemaVersionError)


def test_the_cli_upgrades_and_shows_the_revision(settings, use_settings):
    use_settings(settings)
    result = CliRunner().invoke(app, ["db", "current"])
    assert "revision (none); this aipaas: 0006 (run `aipaas db upgrade`)" in result.output
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "upgraded from revision (none) to 0006" in result.output
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert "already at revision 0006" in result.output
    assert "(up to date)" in CliRunner().invoke(app, ["db", "current"]).output


def test_processes_starting_together_upgrade_once_without_harm(settings, tmp_path):
    go = tmp_path / "go"
    code = (
        "import sys, time, pathlib\n"
        "from aipaas import db\n"
        "from aipaas.settings import get_settings\n"
        "while not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.005)\n"
        "print(db.upgrade(get_settings()))\n"
    )
    env = {**os.environ, **settings_env(settings)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "0006"
    assert _diff(settings) == []
    assert audit.verify(settings).ok


def test_the_audit_sequence_goes_past_32_bits(settings):
    """A busy platform passes 2**31 records (about 250 days at 100 requests a second)."""
    db.upgrade(settings)
    row = {name: None for name in audit.HASHED_FIELDS}
    row |= {"seq": 2**31 + 7, "ts": audit.utc_now(), "kind": "admin", "prev_hash": audit.GENESIS}
    row["hash"] = audit.record_hash(audit.chain_key(settings), row)
    marks = ", ".join("?" * len(row))
    execute(settings, f"INSERT INTO audit_log ({', '.join(row)}) VALUES ({marks})", *row.values())
    rec = audit.append_event(settings, "key.created", key_id="k")
    assert rec.seq == 2**31 + 8
    assert audit.tail(settings, 1)[0]["seq"] == 2**31 + 8
    assert audit.verify(settings).problems[0].startswith(f"records 1..{2**31 + 6} are missing")
