"""The schema of revision 0001, frozen: what ``create_all`` made before migrations existed.

Revision 0001 creates exactly this, and a database an older aipaas made (no
``alembic_version`` table) is brought up to it before being stamped 0001.
It must never change: later changes are new revisions, and ``aipaas.db``
describes the newest schema.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text


def baseline_metadata() -> MetaData:
    """A fresh MetaData holding the 0001 tables (fresh: never shared with the app's)."""
    md = MetaData()
    Table(
        "api_keys",
        md,
        Column("id", String(32), primary_key=True),
        Column("name", String(200), nullable=False),
        Column("key_hash", String(64), nullable=False),
        Column("scopes", String(1000), nullable=False),
        Column("rate", String(32), nullable=True),
        Column("created_at", String(40), nullable=False),
        Column("expires_at", String(40), nullable=True),
        Column("revoked_at", String(40), nullable=True),
        Column("pins", Text, nullable=True),
        Column("quota", String(32), nullable=True),
        Column("budget", String(32), nullable=True),
        Column("prev_key_hash", String(64), nullable=True),
        Column("prev_valid_until", String(40), nullable=True),
        Column("kind", String(16), nullable=True),
        Column("origins", Text, nullable=True),
    )
    audit_log = Table(
        "audit_log",
        md,
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("ts", String(40), nullable=False),
        Column("kind", String(20), nullable=False),
        Column("request_id", String(64), nullable=True),
        Column("key_id", String(32), nullable=True),
        Column("owner", String(200), nullable=True),
        Column("route", String(200), nullable=True),
        Column("model", String(200), nullable=True),
        Column("version", String(32), nullable=True),
        Column("input_hmac", String(64), nullable=True),
        Column("status", Integer, nullable=True),
        Column("latency_ms", Float, nullable=True),
        Column("compute_s", Float, nullable=True),
        Column("cost", Float, nullable=True),
        Column("event", String(64), nullable=True),
        Column("detail", Text, nullable=True),
        Column("end_user", String(64), nullable=True),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
    )
    Index("ix_audit_key_ts", audit_log.c.key_id, audit_log.c.ts)
    Index("ix_audit_ts", audit_log.c.ts)
    Index("ix_audit_end_user", audit_log.c.end_user, audit_log.c.ts)
    Index("ix_audit_event", audit_log.c.event, audit_log.c.model)
    predictions = Table(
        "predictions",
        md,
        Column("request_id", String(64), primary_key=True),
        Column("row", Integer, primary_key=True),
        Column("model", String(200), nullable=False),
        Column("version", String(32), nullable=False),
        Column("output", Text, nullable=False),
        Column("input", Text, nullable=True),
        Column("created_at", String(40), nullable=False),
    )
    Index("ix_predictions_model", predictions.c.model, predictions.c.created_at)
    Table(
        "feedback",
        md,
        Column("request_id", String(64), primary_key=True),
        Column("label", Text, nullable=False),
        Column("key_id", String(32), nullable=True),
        Column("labelled_at", String(40), nullable=False),
    )
    return md
