"""The team setup for real: ``aipaas up`` with all three stores on one PostgreSQL.

The PostgreSQL twin of ``tests/e2e/test_up.py``. One real PostgreSQL server
(the test session's, :mod:`tests.support.postgres`) holds three databases:
the platform's (keys, audit, predictions, feedback, coordination), MLflow's
backend store and Prefect's server database. ``aipaas up`` is pointed at them
with the three settings a team sets (``AIPAAS_AUDIT__DB_URL``,
``AIPAAS_MLFLOW__BACKEND_STORE_URI``, ``AIPAAS_PREFECT__DATABASE_URL``) and
must then start no SQLite anything: no ``*.db`` file appears under the home,
during the run or after it. The loop is closed on that platform for the
``diagnosis`` model (lifecycle, traffic, drift, retrain, swap, no failed
request, the audit chain verified), and the rows are then looked for where
they must be: in PostgreSQL, read with psycopg, not through the platform.

One platform serves the tests in the order written; the last one stops it
with SIGINT, as a person's Ctrl-C; the module's databases are dropped after
it, and the session stops the server.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from aipaas.ops import pgserver
from aipaas.ops.up import port_free
from tests.support.platform import Platform, alive, get, running_up

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STORES = ("platform", "mlflow", "prefect")


@dataclass
class TeamPlatform:
    """The platform, and the PostgreSQL databases its three stores are in."""

    up: Platform
    server: pgserver.PgServer
    databases: dict[str, str]  # store -> database name

    def query(self, store: str, sql: str) -> list[tuple[object, ...]]:
        """Rows straight from the store's PostgreSQL database, as an operator's psql sees them."""
        with psycopg.connect(
            host="127.0.0.1",
            port=self.server.port,
            user="postgres",
            dbname=self.databases[store],
            autocommit=True,
        ) as conn:
            return list(conn.execute(sql))  # type: ignore[arg-type]  # the test's own SQL

    def sqlite_files(self) -> list[Path]:
        """Every SQLite database file under the home (none may exist in the team setup)."""
        return sorted(
            p
            for pattern in ("*.db", "*.db-wal", "*.sqlite", "*.sqlite3")
            for p in self.up.home.rglob(pattern)
        )


@pytest.fixture(scope="module")
def team(
    tmp_path_factory: pytest.TempPathFactory, pg_server: pgserver.PgServer
) -> Iterator[TeamPlatform]:
    """``aipaas up`` on a private data project with every store on ``pg_server``."""
    suffix = uuid.uuid4().hex[:8]
    databases = {store: f"e2e_{store}_{suffix}" for store in STORES}
    urls = {store: pg_server.create_database(name) for store, name in databases.items()}
    stores = {
        "AIPAAS_SERVING__MODELS": '["diagnosis"]',
        # The team setup: the three stores on PostgreSQL.
        "AIPAAS_AUDIT__DB_URL": urls["platform"],
        "AIPAAS_MLFLOW__BACKEND_STORE_URI": urls["mlflow"],
        "AIPAAS_PREFECT__DATABASE_URL": urls["prefect"].replace(
            "postgresql+psycopg://", "postgresql+asyncpg://"
        ),
    }
    try:
        with running_up(tmp_path_factory.mktemp("team-pg"), stores) as up:
            yield TeamPlatform(up, pg_server, databases)
    finally:
        for name in databases.values():
            pg_server.drop_database(name)


def test_up_on_postgresql_starts_every_service_and_no_sqlite(team: TeamPlatform) -> None:
    assert get(team.up.url("prefect", "/api/health"))[0] == 200
    assert get(team.up.url("mlflow", "/health"))[0] == 200
    assert get(team.up.url("serving", "/healthz"))[0] == 200
    assert get(team.up.url("prefect", "/api/deployments/name/lifecycle/lifecycle"))[0] == 200
    children = team.up.children()
    assert set(children) == {"prefect", "mlflow", "ray", "worker", "serving", "profiler"}
    assert all(alive(pid) for pid in children.values())
    # Each server really is on its PostgreSQL database: its schema is there.
    assert team.query("prefect", "SELECT count(*) FROM deployment")[0][0] >= 6
    assert team.query("mlflow", "SELECT count(*) FROM experiments")[0][0] >= 1
    assert team.query("platform", "SELECT count(*) FROM alembic_version")[0][0] == 1
    assert team.sqlite_files() == []


def test_up_runs_the_lifecycle_on_postgresql(team: TeamPlatform) -> None:
    team.up.wait_served({"diagnosis": "1"}, timeout_s=900)
    assert "diagnosis: no champion yet; started the lifecycle" in team.up.output()
    champion = team.query(
        "mlflow",
        "SELECT version FROM registered_model_aliases "
        "WHERE name = 'diagnosis' AND alias = 'champion'",
    )
    assert champion == [(1,)]
    assert team.sqlite_files() == []


def test_demo_closes_the_loop_on_postgresql(team: TeamPlatform) -> None:
    out = team.up.demo("--model", "diagnosis")
    assert "aipaas is already up on this home; using it" in out
    assert "champion v1 serving" in out
    assert "no drift reported on ordinary traffic" in out
    assert "drift detected" in out
    assert "passed its gates; serving swapped to it" in out
    assert ", failed 0," in out
    chains = [line.split("audit chain:")[1] for line in out.splitlines() if "audit chain:" in line]
    assert len(chains) == 1 and "verified" in chains[0], chains


def test_the_rows_are_in_postgresql(team: TeamPlatform) -> None:
    """What the loop wrote is in the three databases, not in files under the home."""
    audited = team.query("platform", "SELECT count(*), count(DISTINCT key_id) FROM audit_log")
    records, clients = audited[0]
    assert isinstance(records, int) and records > 300, audited  # two windows of traffic
    assert isinstance(clients, int) and clients >= 3, audited  # the demo's three clients
    assert team.query("platform", "SELECT count(*) FROM feedback")[0][0] > 0
    assert team.query("mlflow", "SELECT name FROM registered_models") == [("diagnosis",)]
    champion = team.query(
        "mlflow",
        "SELECT version FROM registered_model_aliases "
        "WHERE name = 'diagnosis' AND alias = 'champion'",
    )
    assert champion == [(2,)]
    assert team.query("mlflow", "SELECT count(*) FROM model_versions")[0][0] == 2
    assert team.query("mlflow", "SELECT count(*) FROM metrics WHERE key LIKE 'time_%'")[0][0] > 0
    runs = team.query(
        "prefect",
        "SELECT f.name, count(*) FROM flow_run r JOIN flow f ON f.id = r.flow_id "
        "WHERE r.state_type = 'COMPLETED' GROUP BY f.name",
    )
    completed = {str(name): int(str(n)) for name, n in runs}
    for flow in ("lifecycle", "data", "train", "promote", "drift", "retrain"):
        assert completed.get(flow, 0) >= 1, completed
    assert team.sqlite_files() == []


def test_ctrl_c_stops_every_child_and_frees_the_ports(team: TeamPlatform) -> None:
    children = team.up.children()
    team.up.proc.send_signal(signal.SIGINT)
    assert team.up.proc.wait(90) == 0, team.up.output()
    text = team.up.output()
    assert "stopped prefect" in text and "ignored SIGTERM" not in text, text
    assert not [name for name, pid in children.items() if alive(pid)], text
    assert not (team.up.home / "run" / "up.json").exists()
    assert all(port_free("127.0.0.1", p) for p in team.up.ports.values())
    assert team.sqlite_files() == []
