"""The audit trail: one hash-chained record per request and per admin event.

Each record carries ``prev_hash`` (the hash of the record before it) and its
own ``hash`` over its sequence number, fields and ``prev_hash``, so editing,
deleting, inserting or reordering any record breaks the chain at a place
:func:`verify` can name.

Serving must not answer before its record is durable, yet one fsync per
request would cap throughput. :class:`AuditWriter` is a group commit: a
single writer thread takes everything queued, writes it in one transaction
and resolves each request's future; requests that arrive during a commit go
in the next one. Inputs are not stored, only their HMAC under
``settings.audit.hmac_key`` (so a leaked trail does not let anyone confirm a
guessed input without the key); the model definition's ``log_inputs``
decides whether the raw rows go to the predictions table.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError, OperationalError

from aipaas import db
from aipaas.exceptions import AuditIntegrityError
from aipaas.settings import Settings

log = logging.getLogger(__name__)

GENESIS = "0" * 64
# The fields the hash covers, in order; ``hash`` itself is not among them.
HASHED_FIELDS = (
    "seq",
    "ts",
    "kind",
    "request_id",
    "key_id",
    "owner",
    "route",
    "model",
    "version",
    "input_hmac",
    "status",
    "latency_ms",
    "compute_s",
    "cost",
    "event",
    "detail",
    "prev_hash",
)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(slots=True)
class AuditRecord:
    """One entry; ``seq``, ``prev_hash`` and ``hash`` are set by the writer."""

    kind: str = "request"
    ts: str = field(default_factory=utc_now)
    request_id: str | None = None
    key_id: str | None = None
    owner: str | None = None
    route: str | None = None
    model: str | None = None
    version: str | None = None
    input_hmac: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    compute_s: float | None = None
    cost: float | None = None
    event: str | None = None
    detail: str | None = None
    seq: int = 0
    prev_hash: str = GENESIS
    hash: str = ""


def record_hash(key: bytes, row: dict[str, Any]) -> str:
    """HMAC-SHA256 over the hashed fields in a fixed order (floats as stored).

    Keyed, so someone who can write the database but does not hold
    ``audit.hmac_key`` cannot edit a record and recompute the chain after it.
    """
    values = [row.get(name) for name in HASHED_FIELDS]
    return hmac.new(key, orjson.dumps(values), hashlib.sha256).hexdigest()


def chain_key(settings: Settings) -> bytes:
    return b"aipaas-audit-chain:" + settings.audit.hmac_key.get_secret_value().encode()


def head_file(settings: Settings) -> Path:
    """Where the last committed (seq, hash) is noted, outside the database.

    A chain alone cannot show that its last records were cut off; the head
    noted here can.
    """
    return settings.home / "audit-head"


def _note_head(settings: Settings, seq: int, hash_: str) -> None:
    path = head_file(settings)
    try:
        old = int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        old = 0
    if seq > old:
        path.write_text(f"{seq} {hash_}\n")


def _read_head(settings: Settings) -> tuple[int, str] | None:
    try:
        seq, hash_ = head_file(settings).read_text().split()[:2]
        return int(seq), hash_
    except (FileNotFoundError, ValueError):
        return None


def input_hmac(key: bytes, body: bytes) -> str:
    """HMAC-SHA256 of the canonical input: JSON with sorted keys, or the raw bytes."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = body
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


def _tail(conn: Connection) -> tuple[int, str]:
    row = conn.execute(
        select(db.audit_log.c.seq, db.audit_log.c.hash).order_by(db.audit_log.c.seq.desc()).limit(1)
    ).first()
    return (0, GENESIS) if row is None else (int(row.seq), str(row.hash))


_REC_FIELDS = tuple(f.name for f in fields(AuditRecord))
_AUDIT_COLS = tuple(c.name for c in db.audit_log.columns)
_PRED_COLS = tuple(c.name for c in db.predictions.columns)
_SQL: dict[tuple[str, str], str] = {}


def _insert_sql(conn: Connection, table: str) -> str:
    """A plain positional INSERT: SQLAlchemy's compiled executemany costs more than the commit."""
    style = conn.dialect.paramstyle
    key = (style, table)
    sql = _SQL.get(key)
    if sql is None:
        cols = _AUDIT_COLS if table == "audit_log" else _PRED_COLS
        mark = "?" if style == "qmark" else "%s"
        sql = _SQL[key] = (
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join([mark] * len(cols))})"
        )
    return sql


def _append(
    settings: Settings,
    records: list[AuditRecord],
    predictions: list[dict[str, Any]],
) -> None:
    """Chain and insert ``records`` (and prediction rows) in one transaction.

    The tail is read inside the transaction, so a CLI process appending an
    admin event while the server writes only causes a retry, never a fork.
    """
    eng = db.engine(settings)
    key = chain_key(settings)
    for attempt in range(20):
        try:
            with eng.begin() as conn:
                seq, prev = _tail(conn)
                rows = []
                for rec in records:
                    seq += 1
                    rec.seq = seq
                    rec.prev_hash = prev
                    rec.latency_ms = _round(rec.latency_ms)
                    rec.compute_s = _round(rec.compute_s, 9)
                    rec.cost = None if rec.cost is None else float(rec.cost)
                    row = {name: getattr(rec, name) for name in _REC_FIELDS}
                    rec.hash = row["hash"] = record_hash(key, row)
                    prev = rec.hash
                    rows.append(row)
                if rows:
                    conn.exec_driver_sql(
                        _insert_sql(conn, "audit_log"),
                        [tuple(r[c] for c in _AUDIT_COLS) for r in rows],
                    )
                if predictions:
                    conn.exec_driver_sql(
                        _insert_sql(conn, "predictions"),
                        [tuple(p[c] for c in _PRED_COLS) for p in predictions],
                    )
            if records:
                _note_head(settings, records[-1].seq, records[-1].hash)
            return
        except (IntegrityError, OperationalError) as err:
            # Another process appended between our read of the tail and our
            # insert (IntegrityError on seq) or held the lock: retry.
            if attempt == 19:
                raise
            log.debug("audit append retry %d: %s", attempt, err)
            time.sleep(0.01 * (attempt + 1))


def append_event(
    settings: Settings, event: str, detail: dict[str, Any] | None = None, **fields: Any
) -> AuditRecord:
    """Record an admin event (key created, model swapped...) synchronously."""
    rec = AuditRecord(
        kind="admin",
        event=event,
        detail=orjson.dumps(detail or {}, option=orjson.OPT_SORT_KEYS).decode(),
        **fields,
    )
    _append(settings, [rec], [])
    return rec


_STOP = object()


class AuditWriter:
    """The group-commit writer serving uses; one thread, one transaction per batch.

    ``submit`` returns a future that resolves when the batch holding the
    record is committed; a request awaits it before its response is sent.
    Prediction rows ride in the same transaction, so a ``request_id`` a
    client has seen is always joinable by ``/feedback``.
    """

    def __init__(self, settings: Settings, *, commit_window_ms: float | None = None) -> None:
        self._settings = settings
        window = settings.audit.commit_window_ms if commit_window_ms is None else commit_window_ms
        self._window_s = max(0.0, window) / 1000.0
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="aipaas-audit", daemon=True)
        self.batches = 0
        self.records = 0
        db.engine(settings)
        self._thread.start()

    def submit(
        self, record: AuditRecord | None, predictions: list[dict[str, Any]] | None = None
    ) -> Future[None]:
        fut: Future[None] = Future()
        self._q.put((record, predictions or [], fut))
        return fut

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the thread."""
        self._q.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        last_commit = 0.0
        stopping = False
        while not stopping:
            item = self._q.get()
            if item is _STOP:
                break
            # At most one commit per window: under load the queue fills while
            # we wait, and the batch grows instead of the fsync count.
            wait = self._window_s - (time.monotonic() - last_commit)
            if wait > 0:
                time.sleep(wait)
            batch = [item]
            while True:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            last_commit = time.monotonic()
            records = [rec for rec, _, _ in batch if rec is not None]
            preds = [p for _, ps, _ in batch for p in ps]
            try:
                _append(self._settings, records, preds)
            except Exception as err:  # noqa: BLE001 - handed to every waiting request
                log.error("audit commit of %d records failed: %s", len(records), err)
                for _, _, fut in batch:
                    fut.set_exception(err)
                continue
            self.batches += 1
            self.records += len(records)
            for _, _, fut in batch:
                fut.set_result(None)


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records: int
    problems: tuple[str, ...]
    last_hash: str


def verify(settings: Settings) -> VerifyReport:
    """Walk the chain in sequence order and report every break, with its position."""
    key = chain_key(settings)
    problems: list[str] = []
    expected_seq = 1
    prev_hash = GENESIS
    count = 0
    for row in _iter_rows(settings):
        count += 1
        seq = int(row["seq"])
        if seq != expected_seq:
            if seq > expected_seq:
                problems.append(
                    f"records {expected_seq}..{seq - 1} are missing before seq {seq} (deleted)"
                )
            else:
                problems.append(f"seq {seq} appears out of order after seq {expected_seq - 1}")
        if row["prev_hash"] != prev_hash:
            problems.append(
                f"seq {seq}: prev_hash does not match the record before it "
                "(a record was deleted, inserted or reordered here)"
            )
        if record_hash(key, row) != row["hash"]:
            problems.append(f"seq {seq}: contents do not match its hash (record edited)")
        prev_hash = row["hash"]
        expected_seq = seq + 1
    head = _read_head(settings)
    if head is not None and head[0] > expected_seq - 1:
        problems.append(
            f"records {expected_seq}..{head[0]} are missing at the end "
            f"(the last commit noted in {head_file(settings)} was seq {head[0]})"
        )
    return VerifyReport(
        ok=not problems, records=count, problems=tuple(problems), last_hash=prev_hash
    )


def verify_or_raise(settings: Settings) -> VerifyReport:
    report = verify(settings)
    if not report.ok:
        raise AuditIntegrityError(
            f"audit chain broken ({len(report.problems)} problem(s)); first: {report.problems[0]}"
        )
    return report


def _iter_rows(settings: Settings, chunk: int = 5000) -> Iterator[dict[str, Any]]:
    eng = db.engine(settings)
    t = db.audit_log
    last = -1
    # Keyset pagination by seq: constant memory on long trails.
    while True:
        with eng.connect() as conn:
            rows = conn.execute(
                select(t).where(t.c.seq > last).order_by(t.c.seq).limit(chunk)
            ).all()
        if not rows:
            return
        for r in rows:
            yield dict(r._mapping)
        last = int(rows[-1].seq)


def query(
    settings: Settings,
    *,
    key_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    newest_first: bool = True,
) -> list[dict[str, Any]]:
    """Records filtered by key and UTC time range."""
    t = db.audit_log
    stmt = select(t)
    if key_id:
        stmt = stmt.where(t.c.key_id == key_id)
    if since:
        stmt = stmt.where(t.c.ts >= _iso(since))
    if until:
        stmt = stmt.where(t.c.ts < _iso(until))
    stmt = stmt.order_by(t.c.seq.desc() if newest_first else t.c.seq).limit(limit)
    with db.engine(settings).connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt).all()]
    return rows


def tail(settings: Settings, n: int = 20) -> list[dict[str, Any]]:
    """The last ``n`` records, oldest first."""
    return list(reversed(query(settings, limit=n)))


def _iso(when: datetime) -> str:
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.isoformat(timespec="microseconds")
