"""A real PostgreSQL server per test session (per xdist worker), and a fresh database per test.

The server comes from Debian's binaries (:mod:`aipaas.ops.pgserver`), runs
with fsync off (tests need no power-cut safety, and it starts in about a
second), and is stopped when the session ends, whatever happened. Each test
gets its own ``CREATE DATABASE`` (a file copy of the empty template, about
20 ms), so no test sees another's rows. Missing binaries fail the
PostgreSQL cases loudly: CI installs the package, and a silent skip would
claim a check nobody ran.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aipaas import db
from aipaas.ops import pgserver
from aipaas.settings import Settings

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgserver.PgServer]:
    server = pgserver.start(durable=False, max_connections=300)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: pgserver.PgServer) -> Iterator[str]:
    """The URL of an empty database of its own; dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    pg_server._sql(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
    url = pg_server.url(name)
    yield url
    db.dispose(Settings(_env_file=None, audit={"db_url": url}))  # type: ignore[call-arg]
    pg_server.drop_database(name)


@pytest.fixture(params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(db_backend: str, home: Path, request: pytest.FixtureRequest) -> str:
    """The platform database URL of this backend: a SQLite file in ``home``, or a PG database."""
    if db_backend == "sqlite":
        return f"sqlite:///{home / 'platform.db'}"
    return str(request.getfixturevalue("pg_url"))


def execute(settings: Settings, statement: str, *args: object) -> None:
    """Run raw SQL (``?`` placeholders) on the platform database, as a person with access could."""
    eng = db.engine(settings)
    if eng.dialect.name != "sqlite":
        statement = statement.replace("?", "%s")
    with eng.begin() as conn:
        conn.exec_driver_sql(statement, tuple(args))


def stored_bytes(settings: Settings) -> bytes:
    """Everything the platform database holds, as bytes a leak would expose.

    SQLite: the database file and its WAL. PostgreSQL: every row of every
    table as text (what a dump would show).
    """
    eng = db.engine(settings)
    if eng.dialect.name == "sqlite":
        return b"".join(p.read_bytes() for p in settings.home.glob("platform.db*"))
    with eng.connect() as conn:
        texts = [
            str(row[0])
            for table in db.metadata.sorted_tables
            for row in conn.exec_driver_sql(f"SELECT t::text FROM {table.name} t")
        ]
    return "\n".join(texts).encode()


def never_opened(settings: Settings) -> bool:
    """True when nothing has created the platform schema (a SQLite file is not even there)."""
    if settings.db_url.startswith("sqlite:///"):
        return not (settings.home / "platform.db").exists()
    return db.current(settings) is None
