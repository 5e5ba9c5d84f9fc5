"""The platform database: API keys, the audit trail, predictions and feedback.

One SQLAlchemy Core schema on ``settings.db_url``: a SQLite file under
``home`` by default (WAL mode, so the CLI can read while the server writes),
PostgreSQL when one process is not enough. Usage and cost are not stored
separately: they are aggregated from the audit trail, so the two can never
disagree.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
)

from aipaas.settings import Settings

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("scopes", String(1000), nullable=False),  # comma-separated
    Column("rate", String(32), nullable=True),  # "50/s"; None: the serving default
    Column("created_at", String(40), nullable=False),  # ISO 8601 UTC
    Column("expires_at", String(40), nullable=True),
    Column("revoked_at", String(40), nullable=True),
    # {"model": "version"}: the versions this key's requests get (JSON; None: champions).
    Column("pins", Text, nullable=True),
    Column("quota", String(32), nullable=True),  # "10000/day": requests per period
    Column("budget", String(32), nullable=True),  # "50/month": cost per period
    # Rotation: the previous secret's hash stays valid until ``prev_valid_until``.
    Column("prev_key_hash", String(64), nullable=True),
    Column("prev_valid_until", String(40), nullable=True),
    # "publishable" for a browser app's key (None: a secret key), and the
    # origins (comma-separated) a publishable key works from.
    Column("kind", String(16), nullable=True),
    Column("origins", Text, nullable=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("ts", String(40), nullable=False),
    Column("kind", String(20), nullable=False),  # "request" | "admin"
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
    Column("end_user", String(64), nullable=True),  # keyed pseudonym, never the raw id
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_key_ts", audit_log.c.key_id, audit_log.c.ts)
Index("ix_audit_ts", audit_log.c.ts)
Index("ix_audit_end_user", audit_log.c.end_user, audit_log.c.ts)
Index("ix_audit_event", audit_log.c.event, audit_log.c.model)

# One row per answered row: aipaas.audit.PredictionRecord, field for column.
predictions = Table(
    "predictions",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("row", Integer, primary_key=True),  # position in a batch
    Column("model", String(200), nullable=False),
    Column("version", String(32), nullable=False),
    Column("output", Text, nullable=False),  # JSON
    Column("input", Text, nullable=True),  # JSON, only when the version may log inputs
    Column("created_at", String(40), nullable=False),
)
Index("ix_predictions_model", predictions.c.model, predictions.c.created_at)

feedback = Table(
    "feedback",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("label", Text, nullable=False),  # JSON
    Column("key_id", String(32), nullable=True),
    Column("labelled_at", String(40), nullable=False),
)

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _sqlite_pragmas(fsync: bool) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit is in the WAL file when it returns, so it survives
        # the process dying; FULL also fsyncs, surviving power loss.
        cur.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()

    return on_connect


def engine(settings: Settings) -> Engine:
    """The engine for ``settings.db_url`` with its tables created; one per URL per process."""
    url = settings.db_url
    with _lock:
        eng = _engines.get(url)
        if eng is not None:
            return eng
        if url.startswith("sqlite:///"):
            settings.home.mkdir(parents=True, exist_ok=True)
            eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
            event.listen(eng, "connect", _sqlite_pragmas(settings.audit.fsync))
        else:
            eng = create_engine(url, pool_pre_ping=True)
        metadata.create_all(eng)
        _add_missing_columns(eng)
        _engines[url] = eng
        return eng


def _add_missing_columns(eng: Engine) -> None:
    """Add the nullable columns a database made by an older aipaas lacks.

    ``create_all`` creates missing tables but never changes an existing one.
    Every column added since the first release is nullable, so adding it is
    safe; real schema migrations (Alembic) replace this when a change needs
    more than that.
    """
    found = inspect(eng)
    with eng.begin() as conn:
        for table in metadata.sorted_tables:
            if not found.has_table(table.name):
                continue
            have = {c["name"] for c in found.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                kind = column.type.compile(dialect=eng.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
            for index in table.indexes:
                index.create(conn, checkfirst=True)


def dispose(settings: Settings) -> None:
    """Close the pooled connections of this URL (tests, and before a fork)."""
    with _lock:
        eng = _engines.pop(settings.db_url, None)
    if eng is not None:
        eng.dispose()
