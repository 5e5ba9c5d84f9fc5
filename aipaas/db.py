"""The platform database: API keys, the audit trail, predictions and feedback.

One SQLAlchemy Core schema on ``settings.db_url``: a SQLite file under
``home`` by default (WAL mode, so the CLI can read while the server writes),
PostgreSQL when several processes or hosts share it. Usage and cost are not
stored separately: they are aggregated from the audit trail, so the two can
never disagree.

The tables below are the newest schema; a database reaches it only through
the Alembic revisions in ``aipaas/migrations`` (``create_all`` never changes
a table). :func:`engine` upgrades a database the first time a process uses
it, under a lock (a PostgreSQL advisory lock, a file lock beside a SQLite
file), so serving, the CLI and ``up`` can all start at once; a database a
newer aipaas migrated is refused, never written with a schema we do not know.

The database can be away for a while (PostgreSQL restarting, a failover, a
SQLite file locked by another writer). What a driver raises then is turned
into :class:`DatabaseUnavailableError` (:func:`reachable`), which serving
answers with 503 and ``Retry-After``; the pool checks a connection before
lending it (``pool_pre_ping``) and a new connection gives up after
:data:`CONNECT_TIMEOUT_S`, so the first call after the database is back
reconnects by itself and no call waits on a server that does not answer.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
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
    make_url,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from aipaas.exceptions import AipaasError, SchemaVersionError
from aipaas.settings import Settings

metadata = MetaData()


class DatabaseUnavailableError(AipaasError):
    """The platform database did not answer, or could not take the work now: transient.

    Down, restarting, unreachable, or (SQLite) locked by another writer past
    the busy timeout. The same call succeeds once it is back. ``str(err)``
    names no host, since an HTTP client reads it; ``reason`` keeps the
    driver's own words for the logs.
    """

    exit_code = 21
    transient = True

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


# What the driver raises when the database cannot be reached or cannot take the
# work now (as SQLAlchemy wraps it), unlike a constraint violation or a bad
# statement: the pool's own timeout included (every connection stuck).
UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
)
# How long a new PostgreSQL connection may take before it counts as unreachable.
CONNECT_TIMEOUT_S = 5


def unavailable(err: BaseException) -> DatabaseUnavailableError:
    """``err`` (one of :data:`UNAVAILABLE`, or the driver's own) as a DatabaseUnavailableError."""
    orig = getattr(err, "orig", None) or err
    reason = " ".join(str(orig).split()) or type(orig).__name__
    return DatabaseUnavailableError(
        "the platform database is unreachable or busy; no answer goes out without "
        "its audit record: retry shortly",
        reason=f"{type(orig).__name__}: {reason}"[:500],
    )


@contextlib.contextmanager
def reachable() -> Iterator[None]:
    """Raise :class:`DatabaseUnavailableError` for what the driver raises when it is away."""
    try:
        yield
    except UNAVAILABLE as err:
        raise unavailable(err) from err


def ping(settings: Settings) -> None:
    """One round trip to the platform database (for ``/readyz``).

    Raises:
        DatabaseUnavailableError: it did not answer.
    """
    with reachable(), engine(settings).connect() as conn:
        conn.exec_driver_sql("SELECT 1")


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

# 64-bit on PostgreSQL (a busy platform passes 2**31 records); SQLite's INTEGER
# already is, and only a column declared exactly INTEGER is the table's rowid.
Seq = BigInteger().with_variant(Integer(), "sqlite")

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=False),
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

# The audit chain's last committed (seq, hash), one row (id 1), with an HMAC
# under the audit key; written in the same transaction as the records it names.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Seq, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("mac", String(64), nullable=False),
)

# -- coordination (revision 0003): what every process and host must agree on ---------

# One row per drift check, oldest first by ``at``: aipaas.monitoring.drift_report's
# DriftCheckRecord as JSON, so the record can grow without a migration.
drift_checks = Table(
    "drift_checks",
    metadata,
    Column("id", Seq, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("version", String(32), nullable=False),
    Column("at", Float, nullable=False),  # epoch seconds
    Column("record", Text, nullable=False),  # JSON
)
Index("ix_drift_checks_model", drift_checks.c.model, drift_checks.c.at)

# The last window a decided drift check consumed, per window store (a
# profiles directory, named by the id file in it), model and version.
drift_state = Table(
    "drift_state",
    metadata,
    Column("store", String(64), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("version", String(32), primary_key=True),
    Column("last_seq", Integer, nullable=False),
    Column("checked_at", Float, nullable=False),
)

# When retrains started (the guardrails count them), a week kept.
retrain_starts = Table(
    "retrain_starts",
    metadata,
    Column("id", Seq, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("started_at", Float, nullable=False),
)
Index("ix_retrain_starts_model", retrain_starts.c.model, retrain_starts.c.started_at)

# Every retrain decision and how it ended: aipaas.monitoring.retrain's RetrainOutcome as JSON.
retrain_history = Table(
    "retrain_history",
    metadata,
    Column("id", Seq, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("at", Float, nullable=False),
    Column("action", String(16), nullable=False),
    Column("record", Text, nullable=False),  # JSON
)
Index("ix_retrain_history_model", retrain_history.c.model, retrain_history.c.at)

# How far labelled feedback was exported for a model's retraining (ISO 8601 UTC
# of the latest label exported), so no row is exported twice, from any host.
retrain_exports = Table(
    "retrain_exports",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("exported_through", String(40), nullable=False),
    Column("updated_at", Float, nullable=False),
)

# A counter per model that promotion and rollback bump; serving polls it.
champion_signals = Table(
    "champion_signals",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("generation", Seq, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Files an older aipaas kept under ``home``, imported once: the sha-256 of the
# content, so the same bytes are never imported twice, whichever host has them.
legacy_imports = Table(
    "legacy_imports",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("source", Text, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("imported_at", Float, nullable=False),
)

# -- notifications (revision 0004): what the notifier found and sent ------------------
# Where each source was read up to (aipaas.ops.notify).

notify_cursors = Table(
    "notify_cursors",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("position", String(200), nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Every event found, once: its id names where it came from; ``event`` is the Event as JSON.
notify_events = Table(
    "notify_events",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("at", Float, nullable=False),  # epoch seconds it happened
    Column("event", Text, nullable=False),
    Column("found_at", Float, nullable=False),
)
Index("ix_notify_events_at", notify_events.c.at)

# One row per event and webhook (a hash of its URL): pending, sent or failed.
notify_deliveries = Table(
    "notify_deliveries",
    metadata,
    Column("event_id", String(200), primary_key=True),
    Column("webhook", String(32), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_at", Float, nullable=False),
    Column("status", Integer, nullable=True),  # the last HTTP status, if any answered
    Column("error", Text, nullable=True),  # why the last attempt failed
    Column("updated_at", Float, nullable=False),
)
Index(
    "ix_notify_deliveries_due",
    notify_deliveries.c.webhook,
    notify_deliveries.c.state,
    notify_deliveries.c.next_at,
)

# -- shadow releases (revision 0005): the challenger's answer beside the champion's ----
# One row per row of a request the challenger shadowed (aipaas.training.canary):
# written off the request path; ``output`` None when the challenger failed.
shadow_outputs = Table(
    "shadow_outputs",
    metadata,
    Column("id", Seq, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False),
    Column("row", Integer, nullable=False),
    Column("model", String(200), nullable=False),
    Column("version", String(32), nullable=False),  # the challenger
    Column("champion_version", String(32), nullable=False),
    Column("champion_output", Text, nullable=False),  # JSON
    Column("output", Text, nullable=True),  # JSON; None: the challenger failed
    Column("error", Text, nullable=True),
    Column("latency_ms", Float, nullable=True),  # the challenger's compute for the request
    Column("at", Float, nullable=False),  # epoch seconds
)
Index(
    "ix_shadow_outputs_model",
    shadow_outputs.c.model,
    shadow_outputs.c.version,
    shadow_outputs.c.at,
)

# -- rate limits (revision 0006): per-key token buckets every serving host shares ----
# One row per key (aipaas/inference/ratelimit.py): tokens after the last check, its
# time on the database's clock, whether it took its tokens. UNLOGGED on PostgreSQL.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("last", Float, nullable=False),
    Column("granted", Boolean, nullable=False),
)

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
_MIGRATIONS = Path(__file__).with_name("migrations")
# pg_advisory_xact_lock key of a migration: any constant no other code uses.
_MIGRATION_LOCK = 0x61697061_0001


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


def _create_engine(settings: Settings) -> Engine:
    url = settings.db_url
    if url.startswith("sqlite:///"):
        settings.home.mkdir(parents=True, exist_ok=True)
        eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(eng, "connect", _sqlite_pragmas(settings.audit.fsync))
        return eng
    # A server that is down refuses at once; one that does not answer (a
    # partition, a paused host) would leave a connection attempt waiting forever.
    parsed = make_url(url)
    libpq = parsed.get_driver_name() in ("psycopg", "psycopg2")
    connect_args: dict[str, Any] = (
        {"connect_timeout": CONNECT_TIMEOUT_S}
        if libpq and "connect_timeout" not in parsed.query
        else {}
    )
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def engine(settings: Settings) -> Engine:
    """The engine for ``settings.db_url``, its schema upgraded; one per URL per process."""
    url = settings.db_url
    with _lock:
        eng = _engines.get(url)
        if eng is not None:
            return eng
        eng = _create_engine(settings)
        try:
            _upgrade(eng, settings)
        except BaseException:
            eng.dispose()
            raise
        _engines[url] = eng
        return eng


def upgrade(settings: Settings) -> str:
    """Bring the database to the newest revision this aipaas knows; return that revision.

    Raises:
        SchemaVersionError: a newer aipaas migrated the database past what
            this one knows.
    """
    return _upgrade(engine(settings), settings)


def current(settings: Settings) -> str | None:
    """The database's revision (None: never migrated, or no database yet), changing nothing."""
    from alembic.runtime.migration import MigrationContext

    if (
        settings.db_url.startswith("sqlite:///")
        and not Path(settings.db_url.removeprefix("sqlite:///")).exists()
    ):
        return None
    eng = _create_engine(settings)
    try:
        with eng.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        eng.dispose()


def head_revision() -> str:
    """The newest revision this aipaas knows."""
    head = _scripts().get_current_head()
    assert head is not None  # the package ships its revisions
    return head


def known_revisions() -> set[str]:
    """Every revision this aipaas ships."""
    return {rev.revision for rev in _scripts().walk_revisions()}


def _alembic_config(conn: Connection | None, settings: Settings | None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    cfg.attributes["settings"] = settings  # revision 0002 seeds the audit head with its key
    return cfg


@functools.cache
def _scripts() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None, None))


def _upgrade(eng: Engine, settings: Settings) -> str:
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    scripts = _scripts()
    head = scripts.get_current_head()
    known = known_revisions()
    with _migration_lock(eng), eng.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        found = MigrationContext.configure(conn).get_current_revision()
        if found == head:
            return str(head)
        if found is not None and found not in known:
            raise SchemaVersionError(
                f"the platform database ({eng.url.render_as_string(hide_password=True)}) is at "
                f"schema revision {found}, newer than this aipaas knows (its newest is {head}): "
                "a newer aipaas migrated it; upgrade aipaas to use this database",
                found=found,
                known=str(head),
            )
        cfg = _alembic_config(conn, settings)
        if found is None and _adopt_legacy(conn):
            command.stamp(cfg, "0001")
        command.upgrade(cfg, "head")
    return str(head)


@contextlib.contextmanager
def _migration_lock(eng: Engine) -> Iterator[None]:
    """On SQLite, a file lock beside the database; PostgreSQL locks inside the transaction."""
    if eng.dialect.name != "sqlite" or not eng.url.database:
        yield
        return
    path = Path(f"{eng.url.database}.migrate-lock")
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _adopt_legacy(conn: Connection) -> bool:
    """Bring a database an older aipaas made (no ``alembic_version``) to revision 0001.

    Returns False for an empty database (revision 0001 creates it). Such a
    database has some of the 0001 tables, each perhaps without the columns
    added since the first release; all of those are nullable, so adding them
    is safe, and then the database is exactly the baseline.
    """
    from aipaas.migrations.baseline import baseline_metadata

    baseline = baseline_metadata()
    found = inspect(conn)
    if not any(found.has_table(t.name) for t in baseline.sorted_tables):
        return False
    baseline.create_all(conn)  # tables a very old release did not have
    found = inspect(conn)
    for table in baseline.sorted_tables:
        have = {c["name"] for c in found.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
        for index in table.indexes:
            index.create(conn, checkfirst=True)
    return True


def dispose(settings: Settings) -> None:
    """Close the pooled connections of this URL (tests, and before a fork)."""
    with _lock:
        eng = _engines.pop(settings.db_url, None)
    if eng is not None:
        eng.dispose()
