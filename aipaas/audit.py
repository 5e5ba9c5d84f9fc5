"""The audit trail: one hash-chained record per request and per admin event.

Each record carries ``prev_hash`` (the hash of the record before it) and its
own ``hash`` over its sequence number, fields and ``prev_hash``, so editing,
deleting, inserting or reordering any record breaks the chain at a place
:func:`verify` can name.

Appends serialise on the database, not in a process: every writer takes
the append lock (a PostgreSQL advisory lock, SQLite's write lock) and reads
the tail inside it, so several serving processes, the CLI and other hosts on
one PostgreSQL extend one chain and never fork it. The last committed (seq,
hash) is kept in the one-row ``audit_head`` table, written in the same
transaction and carrying an HMAC under the audit key: a chain alone cannot
show that its last records were cut off; the head can, and nobody without
the key can move it back.

Serving must not answer before its record is durable, yet one fsync per
request would cap throughput. :class:`AuditWriter` is a group commit: a
single writer thread takes everything queued, writes it in one transaction
and resolves each request's future; requests that arrive during a commit go
in the next one. SQLite runs in WAL mode; by default a commit is in the WAL
when the request is answered (it survives the server dying, not a power
cut); ``audit.fsync`` adds an fsync per group commit and then waits up to
``audit.commit_window_ms`` to gather each group. On PostgreSQL an append
commits with ``synchronous_commit`` on even where the server's default is
off, so a database crash cannot take back a record whose answer was sent.
Inputs are not stored, only their HMAC under ``settings.audit.hmac_key`` (so
a leaked trail does not let anyone confirm a guessed input without the key).
Each answered row becomes a :class:`PredictionRecord` in the same
transaction; its raw input is kept only when the served version's
``aipaas.log_inputs`` tag allows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import operator
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, select
from sqlalchemy.exc import OperationalError

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
# Hashed only when set, so records written before the column existed still verify.
OPTIONAL_HASHED_FIELDS = ("end_user",)


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
    # The end user a request was made for: a keyed pseudonym (:func:`end_user_pseudonym`).
    end_user: str | None = None
    seq: int = 0
    prev_hash: str = GENESIS
    hash: str = ""


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One answered row as the ``predictions`` table stores it: what ``/feedback`` joins.

    ``output`` and ``input`` are JSON text; ``input`` is None unless the
    version may log raw inputs. The fields are the table's columns.
    """

    request_id: str
    row: int  # position in a batch
    model: str
    version: str
    output: str
    input: str | None
    created_at: str


def prediction_records(
    request_id: str,
    model: str,
    version: str,
    rows: list[dict[str, Any]],
    outputs: list[Any],
    *,
    log_inputs: bool,
) -> list[PredictionRecord]:
    """The records of one answered request: one per row, inputs only if ``log_inputs``."""
    now = utc_now()
    return [
        PredictionRecord(
            request_id=request_id,
            row=i,
            model=model,
            version=version,
            output=orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
            input=orjson.dumps(row).decode() if log_inputs else None,
            created_at=now,
        )
        for i, (row, out) in enumerate(zip(rows, outputs, strict=True))
    ]


def record_hash(key: bytes, row: dict[str, Any]) -> str:
    """HMAC-SHA256 over the hashed fields in a fixed order (floats as stored).

    Keyed, so someone who can write the database but does not hold
    ``audit.hmac_key`` cannot edit a record and recompute the chain after it.
    """
    values: list[Any] = [row.get(name) for name in HASHED_FIELDS]
    values += [[name, row[name]] for name in OPTIONAL_HASHED_FIELDS if row.get(name) is not None]
    return hmac.new(key, orjson.dumps(values), hashlib.sha256).hexdigest()


def chain_key(settings: Settings) -> bytes:
    return b"aipaas-audit-chain:" + settings.audit.hmac_key.get_secret_value().encode()


def head_mac(key: bytes, seq: int, hash_: str) -> str:
    """The HMAC the head row carries: someone without the key cannot move the head back."""
    return hmac.new(key, f"audit-head:{seq}:{hash_}".encode(), hashlib.sha256).hexdigest()


def _read_head(settings: Settings) -> tuple[int, str, str] | None:
    """The head row: (seq, hash, mac) of the last commit, or None before the first one."""
    t = db.audit_head
    with db.engine(settings).connect() as conn:
        row = conn.execute(select(t.c.seq, t.c.hash, t.c.mac).where(t.c.id == 1)).first()
    return None if row is None else (int(row.seq), str(row.hash), str(row.mac))


def end_user_pseudonym(settings: Settings, end_user: str) -> str:
    """The keyed hash an end user's id is stored as: the same id always maps to the same value.

    Without ``audit.hmac_key`` nobody can tell which id a pseudonym stands for,
    nor confirm a guess; ``aipaas audit query --end-user ID`` hashes ``ID`` the
    same way to find that user's records.
    """
    key = b"aipaas-end-user:" + settings.audit.hmac_key.get_secret_value().encode()
    return hmac.new(key, end_user.encode(), hashlib.sha256).hexdigest()[:32]


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


# pg_advisory_xact_lock key every appender takes: any constant no other code uses.
APPEND_LOCK = 0x61697061_0002
_REC_FIELDS = tuple(f.name for f in fields(AuditRecord))
_AUDIT_COLS = tuple(c.name for c in db.audit_log.columns)
_PRED_COLS = tuple(c.name for c in db.predictions.columns)
# A record's values in the table's column order, in one C call.
_pred_values = operator.attrgetter(*_PRED_COLS)


class _Chain:
    """Appends to the chain on one DBAPI connection, one transaction per batch.

    Each append takes the database's append lock first (PostgreSQL: a
    transaction-level advisory lock; SQLite: ``BEGIN IMMEDIATE``, the write
    lock), then reads the tail inside it, so writers in any number of
    processes queue up on the database and the chain never forks. The head
    row is updated in the same transaction. Plain positional ``executemany``
    on the driver's connection: SQLAlchemy's per-statement machinery would
    cost more than the commit.
    """

    def __init__(self, settings: Settings, *, own_connection: bool = False) -> None:
        self._settings = settings
        self._own = own_connection
        self._eng = db.engine(settings)
        self._key = chain_key(settings)
        dbapi = self._eng.dialect.dbapi
        self._retryable: tuple[type[Exception], ...] = (
            (dbapi.IntegrityError, dbapi.OperationalError) if dbapi else ()
        )
        # The driver's own errors for "cannot reach it" (the pool raises them unwrapped).
        self._unreachable: tuple[type[Exception], ...] = (
            (*db.UNAVAILABLE, dbapi.OperationalError, dbapi.InterfaceError)
            if dbapi
            else db.UNAVAILABLE
        )
        self._sqlite = self._eng.dialect.name == "sqlite"
        mark = "?" if self._eng.dialect.paramstyle == "qmark" else "%s"

        def insert(table: str, cols: tuple[str, ...]) -> str:
            return (
                f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join([mark] * len(cols))})"
            )

        # PostgreSQL: the lock, and a durable commit even where the server's
        # default is synchronous_commit=off (which acknowledges a commit before
        # its WAL is written: a database crash then loses records of answers
        # already sent). Any stronger setting (remote_apply...) is kept.
        self._begin = (
            "BEGIN IMMEDIATE"
            if self._sqlite
            else f"SELECT pg_advisory_xact_lock({APPEND_LOCK}), CASE WHEN "
            "current_setting('synchronous_commit') = 'off' THEN "
            "set_config('synchronous_commit', 'on', true) END"
        )
        self._audit_sql = insert("audit_log", _AUDIT_COLS)
        self._pred_sql = insert("predictions", _PRED_COLS)
        self._head_sql = (
            f"INSERT INTO audit_head (id, seq, hash, mac) VALUES (1, {mark}, {mark}, {mark}) "
            "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
            "mac = excluded.mac"
        )
        self._conn: Any = None

    def append(self, records: list[AuditRecord], predictions: list[PredictionRecord]) -> None:
        """Write one batch, retrying what a busy or restarting database makes fail.

        A commit that fails may still have landed (the server committed, the
        connection died before it said so): the next attempt first looks for
        the batch (:meth:`_landed`) rather than writing it twice.

        Raises:
            DatabaseUnavailableError: no connection could be made (the
                database is down), or it kept failing; the batch was not
                written (unless a commit whose answer was lost landed).
        """
        committing = False
        for attempt in range(20):
            if self._conn is None:
                try:
                    self._conn = self._connect()
                except self._unreachable as err:
                    raise db.unavailable(err) from err
            conn = self._conn
            try:
                cur = conn.cursor()
                if records:
                    # The lock first, then the tail: nobody can append in between.
                    cur.execute(self._begin)
                if committing and self._landed(cur, records, predictions):
                    conn.commit()
                    cur.close()
                    return
                committing = False
                if records:
                    cur.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                    row = cur.fetchone()
                    seq, prev = (int(row[0]), str(row[1])) if row else (0, GENESIS)
                    rows = []
                    for rec in records:
                        seq += 1
                        rec.seq = seq
                        rec.prev_hash = prev
                        rec.latency_ms = _round(rec.latency_ms)
                        rec.compute_s = _round(rec.compute_s, 9)
                        rec.cost = None if rec.cost is None else float(rec.cost)
                        values = {name: getattr(rec, name) for name in _REC_FIELDS}
                        rec.hash = values["hash"] = record_hash(self._key, values)
                        prev = rec.hash
                        rows.append(tuple(values[c] for c in _AUDIT_COLS))
                    cur.executemany(self._audit_sql, rows)
                    cur.execute(self._head_sql, (seq, prev, head_mac(self._key, seq, prev)))
                if predictions:
                    cur.executemany(self._pred_sql, [_pred_values(p) for p in predictions])
                committing = True
                conn.commit()
                cur.close()
            except self._retryable as err:
                self._abandon(conn)
                if attempt == 19:
                    if isinstance(err, self._unreachable):  # e.g. SQLite locked all along
                        raise db.unavailable(err) from err
                    raise
                log.debug("audit append retry %d: %s", attempt, err)
                time.sleep(0.01 * (attempt + 1))
                continue
            except BaseException:
                self._abandon(conn)
                raise
            return

    def _landed(
        self, cur: Any, records: list[AuditRecord], predictions: list[PredictionRecord]
    ) -> bool:
        """Whether the batch whose commit failed was committed after all."""
        mark = "?" if self._sqlite else "%s"
        if records:
            last = records[-1]
            cur.execute(f"SELECT hash FROM audit_log WHERE seq = {mark}", (last.seq,))
            row = cur.fetchone()
            return row is not None and str(row[0]) == last.hash
        first = predictions[0]
        cur.execute(
            f"SELECT 1 FROM predictions WHERE request_id = {mark} AND row = {mark}",
            (first.request_id, first.row),
        )
        return cur.fetchone() is not None

    def _abandon(self, conn: Any) -> None:
        """Roll back; a connection that cannot (the server went away) is replaced next time."""
        try:
            conn.rollback()
        except Exception as err:  # noqa: BLE001 - whatever the driver says, it is unusable
            log.info("audit connection lost, reconnecting on the next batch: %s", err)
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None

    def _connect(self) -> Any:
        conn = self._eng.raw_connection()
        driver = conn.driver_connection
        if self._sqlite and driver is not None and driver.in_transaction:
            conn.rollback()  # BEGIN IMMEDIATE must open the transaction itself
        if not self._own:
            return conn
        # The writer's own connection, outside the pool: on SQLite it never
        # checkpoints itself (a checkpoint fsyncs the database file, and every
        # request waiting on that commit would wait for it); the writer's
        # checkpointer thread does it on another connection instead.
        conn.detach()  # never handed back to the pool with these settings
        if self._sqlite:
            cur = conn.cursor()
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _append(
    settings: Settings,
    records: list[AuditRecord],
    predictions: list[PredictionRecord],
) -> None:
    """Chain and insert ``records`` (and prediction rows) in one transaction."""
    chain = _Chain(settings)
    try:
        chain.append(records, predictions)
    finally:
        chain.close()


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
# How long a request waits for its record's commit before it is refused (503).
COMMIT_WAIT_S = 5.0


def _resolve(futs: list[asyncio.Future[None]], error: Exception | None) -> None:
    for fut in futs:
        if fut.done():  # the request was cancelled (client went away)
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


class AuditWriter:
    """The group-commit writer serving uses; one thread, one transaction per batch.

    ``submit`` returns a future that resolves when the batch holding the
    record is committed; a request awaits it before its response is sent.
    Prediction rows ride in the same transaction, so a ``request_id`` a
    client has seen is always joinable by ``/feedback``.

    When the database is away, each batch fails on its own (every request in
    it gets the error, so none is answered unrecorded) and the next one
    reconnects: nothing needs restarting when it is back. A request waits at
    most ``wait_s`` for its commit (a database that stopped answering
    mid-commit holds the writer until the connection fails). The outage is
    logged once when it starts and once when it ends, with its length.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        commit_window_ms: float | None = None,
        wait_s: float = COMMIT_WAIT_S,
    ) -> None:
        self._settings = settings
        if commit_window_ms is None:
            # Without fsync a commit costs tens of microseconds: waiting to
            # gather a bigger batch would only add latency, and batches form
            # anyway while a commit is running. With fsync (milliseconds per
            # commit) the window amortises it over more requests.
            commit_window_ms = settings.audit.commit_window_ms if settings.audit.fsync else 0.0
        self._window_s = max(0.0, commit_window_ms) / 1000.0
        self.wait_s = wait_s
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="aipaas-audit", daemon=True)
        self.batches = 0
        self.records = 0
        self.failed_batches = 0
        # Since when (monotonic) commits fail, and why; None while they succeed.
        self.failing_since: float | None = None
        # When (monotonic) the batch being written now began; None while idle.
        self.busy_since: float | None = None
        self.last_error: str | None = None
        self._chain = _Chain(settings, own_connection=True)
        self._stopped = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if db.engine(settings).dialect.name == "sqlite":
            self._checkpointer = threading.Thread(
                target=self._checkpoint, name="aipaas-audit-checkpoint", daemon=True
            )
            self._checkpointer.start()
        self._thread.start()

    def _checkpoint(self, every_s: float = 1.0) -> None:
        """Fold the WAL into the database file beside the writer, never in its way."""
        eng = db.engine(self._settings)
        while not self._stopped.wait(every_s):
            try:
                with eng.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except OperationalError as err:  # busy: the next tick will do it
                log.debug("audit checkpoint skipped: %s", err)

    def submit(
        self, record: AuditRecord | None, predictions: list[PredictionRecord] | None = None
    ) -> Future[None]:
        fut: Future[None] = Future()
        self._q.put((record, predictions or [], fut, None))
        return fut

    def submit_async(
        self, record: AuditRecord | None, predictions: list[PredictionRecord] | None = None
    ) -> asyncio.Future[None]:
        """Like :meth:`submit`, for a caller on an event loop.

        The writer resolves a whole batch's futures with one callback into the
        loop, instead of one cross-thread wake-up per request.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._q.put((record, predictions or [], fut, loop))
        return fut

    async def commit(
        self, record: AuditRecord | None, predictions: list[PredictionRecord] | None = None
    ) -> None:
        """Submit and wait until committed, at most :attr:`wait_s`.

        Raises:
            DatabaseUnavailableError: the batch failed, or did not commit in
                time (it may still commit later: a record never goes missing
                for an answer, though one may exist for a request refused).
        """
        fut = self.submit_async(record, predictions)
        # A timer rather than asyncio.wait_for: no extra task switch per request.
        timer = asyncio.get_running_loop().call_later(self.wait_s, self._expire, fut)
        try:
            await fut
        except db.DatabaseUnavailableError:
            raise
        except Exception as err:  # noqa: BLE001 - the writer logged it; the caller answers 503
            raise db.unavailable(err) from err
        finally:
            timer.cancel()

    def _expire(self, fut: asyncio.Future[None]) -> None:
        if not fut.done():  # the writer resolves a done future no more
            fut.set_exception(
                db.DatabaseUnavailableError(
                    "the audit trail did not commit in time: the platform database is not "
                    "answering; no answer goes out without its audit record: retry shortly",
                    reason=f"no commit within {self.wait_s:g} s",
                )
            )

    def stalled(self) -> float | None:
        """How long the batch being written has taken, when longer than :attr:`wait_s`."""
        since = self.busy_since
        took = None if since is None else time.monotonic() - since
        return took if took is not None and took > self.wait_s else None

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the threads."""
        self._q.put(_STOP)
        self._thread.join(timeout)
        self._stopped.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout)

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
            records = [item[0] for item in batch if item[0] is not None]
            preds = [p for item in batch for p in item[1]]
            error: Exception | None = None
            self.busy_since = last_commit
            try:
                self._chain.append(records, preds)
                self.batches += 1
                self.records += len(records)
            except Exception as err:  # noqa: BLE001 - handed to every waiting request
                error = err
            self.busy_since = None
            self._note(error, len(records))
            by_loop: dict[Any, list[Any]] = {}
            for _, _, fut, loop in batch:
                if loop is not None:
                    by_loop.setdefault(loop, []).append(fut)
                elif fut.done():  # pragma: no cover - a caller cancelled it
                    continue
                elif error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(None)
            for loop, futs in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_resolve, futs, error)
                except RuntimeError:  # the loop closed: nobody is waiting any more
                    pass

        self._chain.close()

    def _note(self, error: Exception | None, records: int) -> None:
        """Log an outage once when it starts and once when it ends, not once per batch."""
        now = time.monotonic()
        if error is None:
            if self.failing_since is not None:
                log.warning(
                    "audit trail writable again after %.1f s (%d batches refused meanwhile)",
                    now - self.failing_since,
                    self.failed_batches,
                )
                self.failing_since = None
                self.last_error = None
            return
        self.failed_batches += 1
        reason = error.reason if isinstance(error, db.DatabaseUnavailableError) else str(error)
        self.last_error = " ".join(reason.split())[:500]
        if self.failing_since is None:
            self.failing_since = now
            self.failed_batches = 1
            log.error(
                "audit commit of %d records failed, requests get 503 until it succeeds: %s",
                records,
                self.last_error,
            )
        else:
            log.debug("audit commit of %d records failed again: %s", records, self.last_error)


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
    # A running platform appends while the trail is walked: the head is read
    # before and after the walk, and the end judged by whichever names a record
    # the walk saw (:func:`_judged_head`).
    before = _read_head(settings)
    at_before: str | None = None
    for row in _iter_rows(settings):
        count += 1
        seq = int(row["seq"])
        if before is not None and seq == before[0]:
            at_before = str(row["hash"])
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
    head, end_seq, end_hash = _judged_head(
        before, _read_head(settings), last_seq=expected_seq - 1, last=prev_hash, at_before=at_before
    )
    problems += _check_head(head, key, last_seq=end_seq, last=end_hash)
    return VerifyReport(
        ok=not problems, records=count, problems=tuple(problems), last_hash=prev_hash
    )


def _judged_head(
    before: tuple[int, str, str] | None,
    after: tuple[int, str, str] | None,
    *,
    last_seq: int,
    last: str,
    at_before: str | None,
) -> tuple[tuple[int, str, str] | None, int, str]:
    """The head to judge the walked trail's end by, and the end (seq, hash) it must name.

    The head read after the walk, unless records were committed after the walk
    read past its seq and the head read before the walk names a record the
    walk saw: then the trail grew meanwhile (a running platform), and its end
    as of that first head is what can be checked. A trail cut off at the end
    has both heads ahead of its last record, and is reported.
    """
    grew = after is not None and after[0] > last_seq
    if grew and before is not None and before[0] <= last_seq and at_before is not None:
        return before, before[0], at_before
    return after, last_seq, last


def _check_head(
    head: tuple[int, str, str] | None, key: bytes, *, last_seq: int, last: str
) -> list[str]:
    """What the head row says about the end of the chain: cut off, or the row itself forged."""
    if head is None:
        if last_seq == 0:
            return []
        return [
            f"the head anchor (table audit_head) is missing though the chain has {last_seq} "
            "records: it was deleted, and records at the end may have been cut off"
        ]
    seq, hash_, mac = head
    if not hmac.compare_digest(mac, head_mac(key, seq, hash_)):
        return ["the head anchor (table audit_head) does not match its MAC (edited)"]
    if seq > last_seq:
        return [
            f"records {last_seq + 1}..{seq} are missing at the end "
            f"(the head anchor says the last commit was seq {seq})"
        ]
    if seq < last_seq:
        return [
            f"records {seq + 1}..{last_seq} come after the head anchor (seq {seq}): "
            "appended outside aipaas's writer"
        ]
    if hash_ != last:
        return [f"seq {seq}: its hash is not the one the head anchor names (replaced)"]
    return []


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
    end_user: str | None = None,
    limit: int = 100,
    newest_first: bool = True,
) -> list[dict[str, Any]]:
    """Records filtered by key, end user (the raw id: hashed here) and UTC time range."""
    t = db.audit_log
    pseudonym = end_user_pseudonym(settings, end_user) if end_user is not None else None
    stmt = where_key_and_time(select(t), key_id, since, until, end_user_hash=pseudonym)
    stmt = stmt.order_by(t.c.seq.desc() if newest_first else t.c.seq).limit(limit)
    with db.engine(settings).connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt).all()]
    return rows


def tail(settings: Settings, n: int = 20) -> list[dict[str, Any]]:
    """The last ``n`` records, oldest first."""
    return list(reversed(query(settings, limit=n)))


def where_key_and_time(
    stmt: Any,
    key_id: str | None,
    since: datetime | None,
    until: datetime | None,
    *,
    end_user_hash: str | None = None,
) -> Any:
    """Restrict a query on the audit log to a key, an end user and a UTC time range [since, until).

    ``end_user_hash`` is the stored pseudonym (:func:`end_user_pseudonym`), not the raw id.
    """
    t = db.audit_log
    if key_id:
        stmt = stmt.where(t.c.key_id == key_id)
    if end_user_hash is not None:
        stmt = stmt.where(t.c.end_user == end_user_hash)
    if since:
        stmt = stmt.where(t.c.ts >= iso_utc(since))
    if until:
        stmt = stmt.where(t.c.ts < iso_utc(until))
    return stmt


def iso_utc(when: datetime) -> str:
    """``when`` as the ISO UTC text the tables store (a naive datetime is taken as UTC)."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.isoformat(timespec="microseconds")
