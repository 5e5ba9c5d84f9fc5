"""A throwaway PostgreSQL server on loopback, from Debian's binaries (tests, benchmarks).

The server runs from a fresh data directory under a temporary directory and
listens only on 127.0.0.1 and a socket in that directory, so it can never
meet anyone's real database. PostgreSQL refuses to run as root: when we are
root, the directory is handed to the ``postgres`` user and every binary runs
through ``runuser``. A missing binary is an error, never a skip: a test run
that silently left PostgreSQL out would claim what it did not check.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aipaas.exceptions import ConfigurationError
from aipaas.ops.net import free_port

RUN_AS = "postgres"


def bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding ``initdb`` and ``pg_ctl``."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if not found:
        raise ConfigurationError(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
            "install Debian's `postgresql` package (apt-get install postgresql)"
        )
    return Path(found[-1]).parent


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PgServer:
    """A running server; ``url(db)`` is the SQLAlchemy URL of one of its databases."""

    root: Path
    port: int
    bin: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(statement)  # type: ignore[arg-type]  # our own fixed DDL

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (a plain identifier) and return its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a plain database name: {name!r}")
        self._sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, closing whatever connections are still open on it."""
        self._sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def restart(self) -> None:
        """Restart with the same options: every open connection is cut (failover drills)."""
        log = str(self.root / "server.log")  # never our pipes: the new server keeps its output
        _run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                log,
                "-m",
                "fast",
                "-w",
                "restart",
            ]
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                _as_owner(
                    [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
                ),
                capture_output=True,
                check=False,
                timeout=60,
            )
        shutil.rmtree(self.root, ignore_errors=True)


def start(*, port: int | None = None, durable: bool = True, max_connections: int = 200) -> PgServer:
    """Initialise and start a server on a free loopback port; the caller stops it.

    Args:
        port: The port; a free one when None.
        durable: False turns off fsync and synchronous commit: for tests,
            where a power cut loses nothing of value and each commit's fsync
            would only slow the run. Benchmarks keep the default (durable).
        max_connections: Tests open a pool per database they create.
    """
    binaries = bin_dir()
    root = Path(tempfile.mkdtemp(prefix="aipaas-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, RUN_AS, RUN_AS)
    server = PgServer(root=root, port=port or free_port(), bin=binaries)
    options = f"-p {server.port} -k {root} -h 127.0.0.1 -c max_connections={max_connections}"
    if not durable:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    try:
        _run([str(binaries / "initdb"), "-D", str(server.data), "-A", "trust", "-U", "postgres"])
        _run(
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(server.data),
                "-l",
                str(root / "server.log"),
                "-o",
                options,
                "-w",
                "start",
            ]
        )
    except BaseException:
        server.stop()
        raise
    return server


def _run(argv: list[str]) -> None:
    done = subprocess.run(_as_owner(argv), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        output = done.stderr.strip() or done.stdout.strip()
        raise ConfigurationError(f"{Path(argv[0]).name} failed ({done.returncode}): {output}")
