"""Per-key token buckets shared by every serving replica: on one host, or across hosts.

Invariant: however many replicas a key's requests land on, they take tokens
from one bucket, so the key gets its configured rate in total (plus one
burst), never N times it. Two stores keep that bucket, chosen by
``serving.rate_limit_store`` (:func:`limiter_for`):

- ``host``: replicas of one ``aipaas serve --replicas N`` (one home, one host)
  share ``<home>/serving/ratelimits.bin``, a fixed table of slots mapped into
  every replica's memory; a check holds an exclusive ``flock`` on that file
  for a few microseconds while it refills and takes from the key's slot.
  Replicas on H hosts (separate ``aipaas serve`` processes on one PostgreSQL,
  or Ray Serve across nodes) have H files, so a key would get H times its rate.
- ``database``: the ``rate_buckets`` table of the platform database, on
  PostgreSQL (the setup several hosts share). One statement per check,
  ``INSERT .. ON CONFLICT (key_id) DO UPDATE .. RETURNING``, refills and
  takes under the row's lock, with the time read from the database server's
  clock, so hosts whose clocks disagree still count one bucket the same way.
  About 0.2 ms per check against the file's microseconds
  (``bench/bench_ratelimit.py``).
- ``auto`` (the default): ``database`` whenever the platform database is
  PostgreSQL, the host file (or process memory with one replica) otherwise.
  A serving process cannot know whether another host serves the same
  database, and PostgreSQL is configured precisely so that several do; a
  request there already waits milliseconds for its audit commit on that same
  server, so the check's fraction of a millisecond is the price of a limit
  that holds. SQLite is one host's file, so the host store is exact there.

The database store counts exactly: the statement's time is taken before it
waits for the row lock, and ``last`` only moves forward
(``GREATEST(last, now)``), so a check that waited behind another refills
nothing for that interval rather than twice; accepted requests never exceed
``rate x elapsed + burst``. The table is UNLOGGED on PostgreSQL (no WAL, no
fsync per check): a server crash or a failover empties it, which gives each
key at most one extra burst.

When the database does not answer, a check raises
:class:`aipaas.db.DatabaseUnavailableError` (serving: 503 with
``Retry-After``): it fails closed, as the audit writer does. Failing open
would buy nothing on PostgreSQL, where the request's audit record needs the
same server and the request would be refused with 503 after its compute
anyway; and with the audit trail off it would lift every limit while the
database is away. A connection the server closed (a restart, a failover)
is replaced and the check retried once, so a restart costs no request.

Failure modes of the host file, bounded: the kernel drops a dead replica's
``flock``, so a ``kill -9`` cannot wedge the others; a replica killed
half-way through an update leaves at worst one key's bucket with a wrong
count, which is clamped to ``[0, capacity]`` on the next check. The table
holds :data:`SLOTS` keys; past that, the least recently used slot among a
key's probe sequence is reused with a full bucket (that key gets at most one
extra burst). ``CLOCK_MONOTONIC`` is one clock for every process of the
host, so timestamps written by one replica mean the same to another. Local
buckets per replica (rate / N each) were not an option: the kernel spreads
connections unevenly, so a client would get less than its rate.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    Engine,
    create_engine,
    make_url,
)

from aipaas import db
from aipaas.exceptions import ConfigurationError
from aipaas.inference.keys import RateLimiter, parse_rate
from aipaas.settings import Settings

SLOTS = 4096
PROBES = 8
# fingerprint (0: empty), tokens, last refill (CLOCK_MONOTONIC seconds)
_SLOT = struct.Struct("<Qdd")
_SIZE = SLOTS * _SLOT.size


def limits_path(settings: Settings) -> Path:
    """The file every serving process of this home shares its buckets through."""
    return settings.home / "serving" / "ratelimits.bin"


def _fingerprint(key_id: str) -> int:
    # Never 0, which marks an empty slot.
    return int.from_bytes(hashlib.blake2b(key_id.encode(), digest_size=8).digest(), "little") | 1


class SharedBuckets:
    """Token buckets in a file mapped by every replica; see the module docstring.

    ``acquire`` has the signature of the in-process limiter's, so the
    serving tier cannot tell them apart.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise ConfigurationError(
                f"cannot open the shared rate-limit file {str(path)!r}: {err}; "
                "check that AIPAAS_HOME is writable"
            ) from err
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_size < _SIZE:  # the first replica sizes it (zeros: empty)
                os.ftruncate(self._fd, _SIZE)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._map = mmap.mmap(self._fd, _SIZE)
        # flock belongs to the open file, which this process's threads share.
        self._lock = threading.Lock()

    def acquire(self, key_id: str, per_s: float, capacity: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``key_id``'s bucket; 0.0 if allowed, else seconds to wait."""
        fp = _fingerprint(key_id)
        start = fp % SLOTS
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                now = time.monotonic()
                offset, tokens, last = self._slot(fp, start, capacity, now)
                tokens = min(capacity, max(0.0, tokens) + max(0.0, now - last) * per_s)
                if tokens >= cost:
                    _SLOT.pack_into(self._map, offset, fp, tokens - cost, now)
                    return 0.0
                _SLOT.pack_into(self._map, offset, fp, tokens, now)
                return (cost - tokens) / per_s
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _slot(self, fp: int, start: int, capacity: float, now: float) -> tuple[int, float, float]:
        """The key's slot (offset, tokens, last): its own, an empty one, or the stalest probed."""
        stalest: tuple[float, int] | None = None
        for i in range(PROBES):
            offset = ((start + i) % SLOTS) * _SLOT.size
            owner, tokens, last = _SLOT.unpack_from(self._map, offset)
            if owner == fp:
                return offset, tokens, last
            if owner == 0:
                return offset, capacity, now
            if stalest is None or last < stalest[0]:
                stalest = (last, offset)
        assert stalest is not None
        return stalest[1], capacity, now

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


class SharedRateLimiter(RateLimiter):
    """:class:`aipaas.inference.keys.RateLimiter` over :class:`SharedBuckets`: one rate in total."""

    blocking = False  # microseconds under a flock: fine on the event loop

    def __init__(self, default_rate: str, path: Path) -> None:
        super().__init__(default_rate)
        self.buckets = SharedBuckets(path)

    def acquire(self, key_id: str, rate: str | None, cost: float = 1.0) -> float:
        per_s, capacity = parse_rate(rate) if rate else self._default
        return self.buckets.acquire(key_id, per_s, capacity, cost)


# -- across hosts: the platform database --------------------------------------------

Store = Literal["memory", "host", "database"]
STORES = ("auto", "host", "database")

rate_buckets = db.rate_buckets  # revision 0006 (UNLOGGED on PostgreSQL)

# The refill, from the database's clock: the statement's time (EXCLUDED.last,
# taken before it waits for the row lock) past the last one, never negative.
_REFILL = "LEAST(%(capacity)s, b.tokens + GREATEST(EXCLUDED.last - b.last, 0) * %(per_s)s)"
_TAKE = f"""
INSERT INTO rate_buckets AS b (key_id, tokens, last, granted)
VALUES (%(key_id)s, %(fresh)s, extract(epoch FROM clock_timestamp())::float8, %(fresh_granted)s)
ON CONFLICT (key_id) DO UPDATE SET
    tokens = CASE WHEN {_REFILL} >= %(cost)s THEN {_REFILL} - %(cost)s ELSE {_REFILL} END,
    last = GREATEST(b.last, EXCLUDED.last),
    granted = {_REFILL} >= %(cost)s
RETURNING tokens, granted
"""
# Concurrent checks a serving process may hold connections for; past it a
# check waits up to db.CONNECT_TIMEOUT_S for one, then counts as unavailable.
POOL_SIZE = 8


def is_postgresql(settings: Settings) -> bool:
    """Whether the platform database is PostgreSQL (the setup several hosts share)."""
    return make_url(settings.db_url).get_backend_name() == "postgresql"


def store_for(settings: Settings) -> Store:
    """Where ``settings`` keeps the buckets; see the module docstring for why.

    Raises:
        ConfigurationError: an unknown ``serving.rate_limit_store``, or
            ``database`` while the platform database is not PostgreSQL.
    """
    choice = getattr(settings.serving, "rate_limit_store", "auto")
    if choice not in STORES:
        raise ConfigurationError(
            f"serving.rate_limit_store {choice!r} is not one of {', '.join(STORES)}"
        )
    postgres = is_postgresql(settings)
    if choice == "database" and not postgres:
        raise ConfigurationError(
            "serving.rate_limit_store 'database' needs the platform database on PostgreSQL "
            "(audit.db_url=postgresql+psycopg://...): a SQLite file is one host's, where "
            "'host' (or 'auto') shares the buckets exactly"
        )
    if choice == "database" or (choice == "auto" and postgres):
        return "database"
    return "host" if settings.serving.replicas > 1 else "memory"


def limiter_for(settings: Settings) -> RateLimiter:
    """The serving tier's limiter: in memory, the host's file, or the platform database.

    One replica on SQLite needs nothing shared (nothing to pay); several on
    one host share the file under ``home``; on PostgreSQL every replica of
    every host shares the database's buckets (:func:`store_for`).

    Raises:
        ConfigurationError: a bad ``serving.default_rate`` or store setting, or
            an unwritable home.
        DatabaseUnavailableError: the database store's database did not answer.
    """
    rate = settings.serving.default_rate
    store = store_for(settings)
    if store == "database":
        return DatabaseRateLimiter(rate, settings)
    if store == "host":
        return SharedRateLimiter(rate, limits_path(settings))
    return RateLimiter(rate)


class DatabaseBuckets:
    """Token buckets in the platform database's ``rate_buckets``; see the module docstring.

    A pool of its own, without a ping before each check (the ping would
    double the round trips): a connection the server closed fails its
    statement, the pool is replaced and the check runs once more.
    """

    def __init__(self, settings: Settings) -> None:
        if not is_postgresql(settings):
            raise ConfigurationError(
                "the database rate-limit store needs the platform database on PostgreSQL "
                "(audit.db_url=postgresql+psycopg://...)"
            )
        # Nothing connects here: serving starts while the database is away,
        # and its first check brings the schema (rate_buckets) up to date.
        self._settings = settings
        self._schema_ready = False
        url = make_url(settings.db_url)
        libpq = url.get_driver_name() in ("psycopg", "psycopg2")
        self._engine: Engine = create_engine(
            url,
            isolation_level="AUTOCOMMIT",  # one statement, one round trip
            pool_size=POOL_SIZE,
            max_overflow=POOL_SIZE,
            pool_timeout=db.CONNECT_TIMEOUT_S,
            pool_reset_on_return=None,  # autocommit: nothing to roll back
            connect_args=(
                {"connect_timeout": db.CONNECT_TIMEOUT_S}
                if libpq and "connect_timeout" not in url.query
                else {}
            ),
        )
        dbapi = self._engine.dialect.loaded_dbapi
        self._away: tuple[type[Exception], ...] = (dbapi.OperationalError, dbapi.InterfaceError)

    def acquire(self, key_id: str, per_s: float, capacity: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``key_id``'s bucket; 0.0 if allowed, else seconds to wait.

        Raises:
            DatabaseUnavailableError: the database did not answer (twice, for
                a connection it had closed).
        """
        if not self._schema_ready:
            with db.reachable():
                db.engine(self._settings)  # upgraded once per process: rate_buckets is there
            self._schema_ready = True
        params: dict[str, Any] = {
            "key_id": key_id,
            "per_s": per_s,
            "capacity": capacity,
            "cost": cost,
            # A key's first check finds a full bucket.
            "fresh": capacity - cost if capacity >= cost else capacity,
            "fresh_granted": capacity >= cost,
        }
        try:
            tokens, granted = self._take(params)
        except self._away:
            self._engine.dispose()  # every pooled connection is as dead as that one
            try:
                tokens, granted = self._take(params)
            except (*self._away, *db.UNAVAILABLE) as err:
                raise db.unavailable(err) from err
        except db.UNAVAILABLE as err:  # no connection: refused, timed out, pool exhausted
            raise db.unavailable(err) from err
        return 0.0 if granted else (cost - float(tokens)) / per_s

    def _take(self, params: dict[str, Any]) -> tuple[float, bool]:
        conn = self._engine.raw_connection()
        try:
            cur = conn.cursor()
            try:
                cur.execute(_TAKE, params)
                row = cur.fetchone()
            finally:
                cur.close()
        except self._away:
            conn.invalidate()
            raise
        finally:
            conn.close()
        assert row is not None  # INSERT .. ON CONFLICT DO UPDATE returns its row
        return float(row[0]), bool(row[1])

    def close(self) -> None:
        self._engine.dispose()


class DatabaseRateLimiter(RateLimiter):
    """:class:`aipaas.inference.keys.RateLimiter` over :class:`DatabaseBuckets`: across hosts.

    ``blocking``: a check is a round trip to the database, so serving runs
    it in a worker thread, never on the event loop.
    """

    blocking = True

    def __init__(self, default_rate: str, settings: Settings) -> None:
        super().__init__(default_rate)
        self.buckets = DatabaseBuckets(settings)

    def acquire(self, key_id: str, rate: str | None, cost: float = 1.0) -> float:
        per_s, capacity = parse_rate(rate) if rate else self._default
        return self.buckets.acquire(key_id, per_s, capacity, cost)

    def close(self) -> None:
        self.buckets.close()
