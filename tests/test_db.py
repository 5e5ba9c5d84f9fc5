"""The platform database: one made by an older aipaas (no Alembic) is adopted and keeps verifying.

Every test runs on SQLite and on a real PostgreSQL.
"""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
from sqlalchemy import create_engine, inspect

from aipaas import audit, db
from aipaas.inference import keys, usage
from tests.support.postgres import execute


@pytest.fixture
def settings(platform_settings):
    return platform_settings


# The schema as the release before issue 10 created it (what create_all made).
OLD_SCHEMA = """
CREATE TABLE api_keys (
    id VARCHAR(32) NOT NULL, name VARCHAR(200) NOT NULL, key_hash VARCHAR(64) NOT NULL,
    scopes VARCHAR(1000) NOT NULL, rate VARCHAR(32), created_at VARCHAR(40) NOT NULL,
    expires_at VARCHAR(40), revoked_at VARCHAR(40), PRIMARY KEY (id)
);
CREATE TABLE audit_log (
    seq INTEGER NOT NULL, ts VARCHAR(40) NOT NULL, kind VARCHAR(20) NOT NULL,
    request_id VARCHAR(64), key_id VARCHAR(32), owner VARCHAR(200), route VARCHAR(200),
    model VARCHAR(200), version VARCHAR(32), input_hmac VARCHAR(64), status INTEGER,
    latency_ms FLOAT, compute_s FLOAT, cost FLOAT, event VARCHAR(64), detail TEXT,
    prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL, PRIMARY KEY (seq)
);
CREATE INDEX ix_audit_key_ts ON audit_log (key_id, ts);
CREATE INDEX ix_audit_ts ON audit_log (ts);
CREATE TABLE feedback (
    request_id VARCHAR(64) NOT NULL, label TEXT NOT NULL, key_id VARCHAR(32),
    labelled_at VARCHAR(40) NOT NULL, PRIMARY KEY (request_id)
);
CREATE TABLE predictions (
    request_id VARCHAR(64) NOT NULL, "row" INTEGER NOT NULL, model VARCHAR(200) NOT NULL,
    version VARCHAR(32) NOT NULL, output TEXT NOT NULL, input TEXT,
    created_at VARCHAR(40) NOT NULL, PRIMARY KEY (request_id, "row")
);
CREATE INDEX ix_predictions_model ON predictions (model, created_at);
"""
OLD_AUDIT_FIELDS = audit.HASHED_FIELDS  # what the old writer hashed, nothing optional
OLD_KEY = f"aip_{'ab' * 6}_{'s' * 32}"


def _old_hash(settings, row: dict) -> str:
    """The chain hash exactly as the previous release computed it."""
    values = [row.get(name) for name in OLD_AUDIT_FIELDS]
    return hmac.new(audit.chain_key(settings), orjson.dumps(values), hashlib.sha256).hexdigest()


def _raw(settings, statement: str, *args) -> None:
    """SQL on the database without going through aipaas (which would upgrade it)."""
    eng = create_engine(settings.db_url)
    if eng.dialect.name != "sqlite":
        statement = statement.replace("?", "%s")
    with eng.begin() as conn:
        conn.exec_driver_sql(statement, tuple(args))
    eng.dispose()


def _old_database(settings) -> None:
    for statement in OLD_SCHEMA.split(";"):
        if statement.strip():
            _raw(settings, statement)
    _raw(
        settings,
        "INSERT INTO api_keys VALUES (?, 'old-app', ?, 'predict', NULL, "
        "'2026-01-01T00:00:00.000000+00:00', NULL, NULL)",
        "ab" * 6,
        hashlib.sha256(OLD_KEY.encode()).hexdigest(),
    )
    prev = audit.GENESIS
    for seq in (1, 2, 3):
        row = {name: None for name in OLD_AUDIT_FIELDS}
        row |= {
            "seq": seq,
            "ts": f"2026-01-0{seq}T10:00:00.000000+00:00",
            "kind": "request",
            "key_id": "ab" * 6,
            "owner": "old-app",
            "route": "/predict",
            "model": "diagnosis",
            "version": "1",
            "status": 200,
            "compute_s": 0.002,
            "cost": 0.001,
            "prev_hash": prev,
        }
        row["hash"] = prev = _old_hash(settings, row)
        cols = ", ".join(row)
        _raw(
            settings,
            f"INSERT INTO audit_log ({cols}) VALUES ({', '.join('?' * len(row))})",
            *row.values(),
        )


def _inspect(settings, what: str, table: str) -> set[str]:
    eng = create_engine(settings.db_url)
    found = getattr(inspect(eng), what)(table)
    eng.dispose()
    return {c["name"] for c in found}


def _columns(settings, table: str) -> set[str]:
    return _inspect(settings, "get_columns", table)


def test_an_older_database_gains_the_new_columns_and_keeps_verifying(settings):
    _old_database(settings)
    assert "end_user" not in _columns(settings, "audit_log")

    db.engine(settings)  # the first use by this release upgrades it

    assert {"pins", "quota", "budget", "prev_key_hash", "prev_valid_until"} <= _columns(
        settings, "api_keys"
    )
    assert "end_user" in _columns(settings, "audit_log")
    indexes = _inspect(settings, "get_indexes", "audit_log")
    assert {"ix_audit_end_user", "ix_audit_event"} <= indexes
    assert db.current(settings) == db.head_revision()
    report = audit.verify(settings)
    assert report.ok and report.records == 3, report.problems

    # Old keys keep working, with no pins or limits.
    (old,) = keys.list_keys(settings)
    assert (old.pins, old.quota, old.budget, old.prev_valid_until) == ({}, None, None, None)
    assert keys.KeyStore(settings, ttl_s=0).authenticate(f"Bearer {OLD_KEY}").id == "ab" * 6

    # New records, with an end user, join the same chain; the end user is covered by it.
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    pseudonym = audit.end_user_pseudonym(settings, "alice")
    writer.submit(audit.AuditRecord(key_id="ab" * 6, status=200, end_user=pseudonym)).result(10)
    writer.close()
    assert audit.verify(settings).ok
    assert sum(r.requests for r in usage.usage(settings)) == 4
    assert [r["seq"] for r in audit.query(settings, end_user="alice")] == [4]

    execute(settings, "UPDATE audit_log SET end_user = ? WHERE seq = 4", "f" * 32)
    assert any("seq 4" in p and "edited" in p for p in audit.verify(settings).problems)


def test_the_old_head_file_moves_into_the_database_and_still_catches_a_cut(settings):
    """An older aipaas noted the head in <home>/audit-head: the upgrade carries it over."""
    _old_database(settings)
    (settings.home / "audit-head").write_text(f"5 {'e' * 64}".ljust(100) + "\n")
    db.engine(settings)
    problems = audit.verify(settings).problems
    assert any("4..5 are missing at the end" in p for p in problems), problems


def test_upgrading_twice_changes_nothing(settings):
    _old_database(settings)
    db.engine(settings)
    db.dispose(settings)
    db.engine(settings)  # the columns are there now: no ALTER fails
    assert audit.verify(settings).ok


@pytest.mark.parametrize("table", [t.name for t in db.metadata.sorted_tables])
def test_a_new_database_has_every_column(settings, table):
    db.engine(settings)
    assert _columns(settings, table) == {c.name for c in db.metadata.tables[table].columns}
