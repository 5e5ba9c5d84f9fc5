"""Locks and one-time imports that every process and host sharing the platform database agree on.

The invariant: at most one holder of :func:`lock` ``(settings, name)`` at a
time among all processes whose settings name the same platform database, on
whatever host they run. Drift checks of one model and the retrain
guardrails' check-and-record take it, so two drift runs on two hosts never
judge the same windows twice nor both pass a cooldown.

- PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) whose
  key is a stable 64-bit hash of the name, on a connection of its own
  (autocommit, outside the pool), opened for the lock and closed after it.
  The lock lives exactly as long as that connection: a process that dies
  releases it at once, a host that drops off the network once TCP
  keepalives notice (about a minute, set below); the critical section keeps
  the whole pool for its own queries, and no transaction stays open while
  it runs.
- SQLite: a database file is on one host by definition (SQLite over a
  network file system is not safe), so a ``flock`` on a file beside the
  database file is enough: it belongs to the open file, so threads exclude
  each other too and a dying process releases it. Beside the database, not
  in ``home``: two homes that name one SQLite file still share the lock.

Locks are not re-entrant: a thread asking again for a name it holds would
wait for itself forever, so that is refused at once.

:func:`import_once` moves a file an older aipaas kept under ``home`` into the
database exactly once (see there).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, insert, select, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import NullPool

from aipaas import db
from aipaas.settings import Settings

log = logging.getLogger(__name__)

# libpq's TCP keepalives on the lock's connection: a silent peer is declared
# dead after about 30 + 3 * 10 s, and the server releases its locks then.
_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

_lock_engines: dict[str, Engine] = {}
_guard = threading.Lock()
_local = threading.local()


def lock_key(name: str) -> int:
    """The advisory lock key of ``name``: the same on every host and every run (signed 64-bit)."""
    digest = hashlib.blake2b(f"aipaas:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextlib.contextmanager
def lock(settings: Settings, name: str) -> Iterator[None]:
    """Hold the platform-wide lock ``name`` inside; waits for whoever holds it.

    Raises:
        RuntimeError: this thread already holds ``name`` (a bug: it would
            wait for itself forever).
    """
    held: set[tuple[str, str]] = getattr(_local, "held", None) or set()
    _local.held = held
    mine = (settings.db_url, name)
    if mine in held:
        raise RuntimeError(
            f"lock {name!r} is already held by this thread (locks are not re-entrant)"
        )
    held.add(mine)
    try:
        if make_url(settings.db_url).get_backend_name() == "sqlite":
            with _file_lock(lock_path(settings, name)):
                yield
        else:
            with _advisory_lock(settings.db_url, name):
                yield
    finally:
        held.discard(mine)


def lock_path(settings: Settings, name: str) -> Path:
    """SQLite: the file :func:`lock` flocks, in ``<database>.locks/`` beside the database file."""
    database = make_url(settings.db_url).database
    if database and database != ":memory:":
        folder = Path(f"{database}.locks")
    else:
        folder = settings.home / "locks"
    tag = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    return folder / f"{_UNSAFE.sub('_', name)[:80]}-{tag}.lock"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _lock_engine(url: str) -> Engine:
    with _guard:
        eng = _lock_engines.get(url)
        if eng is None:
            eng = create_engine(
                url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=_KEEPALIVE
            )
            _lock_engines[url] = eng
        return eng


@contextlib.contextmanager
def _advisory_lock(url: str, name: str) -> Iterator[None]:
    key = lock_key(name)
    with _lock_engine(url).connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            except DBAPIError as err:
                # The connection is gone, and the server released the lock with
                # it; closing is all that is left to do.
                log.warning("lock %r: its database connection dropped while held: %s", name, err)


# -- files an older aipaas kept under home -------------------------------------------


def import_once(settings: Settings, path: Path, write: Callable[[Connection, bytes], int]) -> int:
    """Move the content of ``path`` into the platform database once; the rows ``write`` added.

    ``write(conn, content)`` inserts what the file holds, in the transaction
    that also records the content's sha-256 in ``legacy_imports``; then the
    file is renamed to ``<name>.imported-<digest>`` (kept, for a person to
    check). A crash before the commit leaves the file to import next time;
    one after it leaves a digest that skips the insert: the rows land
    exactly once, whichever process or host gets there first. A file an
    older process writes again later is new content, imported in turn. With
    no file (the usual case) this costs one ``stat``.
    """
    if not path.is_file():
        return 0
    with lock(settings, f"import:{path}"):
        try:
            content = path.read_bytes()
        except FileNotFoundError:  # another process imported it while we waited
            return 0
        digest = hashlib.sha256(content).hexdigest()
        t = db.legacy_imports
        rows = 0
        try:
            with db.engine(settings).begin() as conn:
                if conn.execute(select(t.c.digest).where(t.c.digest == digest)).first() is None:
                    rows = write(conn, content)
                    conn.execute(
                        insert(t).values(
                            digest=digest, source=str(path), rows=rows, imported_at=time.time()
                        )
                    )
        except IntegrityError:  # the same bytes, imported meanwhile from another host
            rows = 0
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, path.with_name(f"{path.name}.imported-{digest[:12]}"))
        if rows:
            log.info("imported %d rows of %s into the platform database", rows, path)
        return rows


def jsonl_records(content: bytes) -> list[dict[str, Any]]:
    """The records of a JSON-lines history, as :func:`aipaas.files.iter_jsonl` reads them.

    Blank lines and a line cut off by a crash mid-append are skipped.
    """
    out = []
    for line in content.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out
