"""The platform database away under traffic: 503, never an unaudited 200; back by itself.

A real PostgreSQL of this module's own is stopped (``pg_ctl stop -m fast``,
or its postmaster killed with SIGKILL) and started again on the same port
and data directory, or frozen (SIGSTOP: it accepts connections and answers
nothing, as a paused VM or a cut network does), while two clients send
``/predict`` in a loop to a real uvicorn serving a real LightGBM champion
from a real MLflow store. What a user and an operator would see:

- every 200 has its audit record and its prediction row (request ids
  matched against the tables afterwards), and the chain verifies;
- while the database is away, requests are answered 503 with
  ``Retry-After`` and a JSON error (serving stays up: no connection fails,
  none hangs past the writer's wait), and ``/readyz`` says why;
- once it is back, requests succeed again within seconds with no restart of
  serving, and ``/readyz`` is 200 again (the champion follower survived).

On SQLite the database cannot be "down"; what stops the writer there is
another process holding the write lock (a backup, a long CLI transaction):
the same promise holds, with the writer's wait shortened to keep it quick.
The measured recovery times are printed (``pytest -s``).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from aipaas import audit, db
from aipaas.inference import keys
from aipaas.ops import pgserver
from aipaas.settings import Settings
from serving.app import create_app
from tests.conftest import make_settings
from tests.support.models import FEATURES, log_lgbm
from tests.support.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROW = dict.fromkeys(FEATURES, 1.0)
CLIENTS = 2
PAUSE_S = 0.005  # between one client's requests: traffic, not a busy loop
OUTAGE_S = 3.0  # how long the database stays away
# Frozen, it must stay away longer than a request waits for refusals to show: on
# PostgreSQL the rate-limit check (2.5 s) and then the refusal's audit commit (5 s).
FROZEN_S = 10.0
RECOVERY_BOUND_S = 5.0  # the first 200 after the database is back, at the latest
# No request may take longer than the longest waits serving allows (a key
# lookup or the rate-limit check, 2.5 s each, then its refusal's audit commit,
# 5 s) plus slack for a loaded two-core machine.
REQUEST_BOUND_S = 12.5


@dataclass
class Answer:
    sent: float  # time.monotonic()
    done: float
    status: int | None  # None: the connection failed
    request_id: str | None = None
    retry_after: str | None = None
    content_type: str | None = None
    body: Any = None
    error: str | None = None


@dataclass
class Served:
    settings: Settings
    base: str
    key: str
    app: Any
    answers: list[Answer] = field(default_factory=list)

    def readyz(self) -> httpx.Response:
        return httpx.get(f"{self.base}/readyz", timeout=10)


@dataclass
class Traffic:
    """Clients posting ``/predict`` in a loop until stopped; every answer kept."""

    served: Served
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Traffic:
        for _ in range(CLIENTS):
            t = threading.Thread(target=self._client, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(REQUEST_BOUND_S + 5)

    def _client(self) -> None:
        auth = {"Authorization": f"Bearer {self.served.key}"}
        with httpx.Client(base_url=self.served.base, headers=auth, timeout=30) as c:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post("/predict", json=ROW)
                except httpx.HTTPError as err:
                    self.answers.append(Answer(sent, time.monotonic(), None, error=repr(err)))
                    continue
                ctype = r.headers.get("content-type")
                self.answers.append(
                    Answer(
                        sent,
                        time.monotonic(),
                        r.status_code,
                        r.headers.get("x-request-id"),
                        r.headers.get("retry-after"),
                        ctype,
                        r.json() if ctype == "application/json" else r.text,
                    )
                )
                time.sleep(PAUSE_S)


def _serve(settings: Settings) -> Iterator[Served]:
    """A champion in MLflow, a key, and the app under a real uvicorn in a thread."""
    log_lgbm(settings)
    key = keys.create_key(settings, "outage", "predict", rate="10000/s")[1]
    app = create_app(settings)
    port = free_port()
    # log_config=None: uvicorn's records reach the test's log capture.
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    served = Served(settings, f"http://127.0.0.1:{port}", key, app)
    try:
        assert served.readyz().status_code == 200, served.readyz().text
        yield served
    finally:
        server.should_exit = True
        thread.join(30)
        db.dispose(settings)


# -- SQLite: the write lock held by another process ------------------------------------


@pytest.fixture
def on_sqlite(home: Path) -> Iterator[Served]:
    """Served on SQLite, stopped before the PostgreSQL tests start their own.

    Only one app runs at a time: MLflow's tracking URI is one per process.
    """
    yield from _serve(make_settings(home))


def test_sqlite_write_lock_held_elsewhere_refuses_with_503_then_recovers(
    on_sqlite: Served,
) -> None:
    on_sqlite.app.state.writer.wait_s = 1.0  # the lock is held for OUTAGE_S: longer
    path = on_sqlite.settings.home / "platform.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        answers, outage = _outage(
            on_sqlite,
            lambda: holder.execute("BEGIN IMMEDIATE"),
            lambda: holder.execute("ROLLBACK"),
        )
    finally:
        holder.close()
    figures = _check(on_sqlite, answers, outage)
    print(f"\nSQLite write lock held for {OUTAGE_S:g} s: {figures}")


# -- PostgreSQL, stopped, killed and frozen -------------------------------------------


def _pg_ctl(server: pgserver.PgServer, *args: str) -> None:
    pgserver._run([str(server.bin / "pg_ctl"), "-D", str(server.data), *args])


def _postmaster(server: pgserver.PgServer) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _signal_all(server: pgserver.PgServer, sig: signal.Signals) -> None:
    """``sig`` to the postmaster and every process it started (backends, writers)."""
    pid = _postmaster(server)
    for p in [pid, *_children(pid)]:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _stop(server: pgserver.PgServer) -> None:
    _pg_ctl(server, "-m", "fast", "-w", "stop")


def _kill(server: pgserver.PgServer) -> None:
    """SIGKILL to the postmaster; its backends notice and exit, the port closes."""
    pid = _postmaster(server)
    backends = _children(pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in [pid, *backends]):
        assert time.monotonic() < deadline, "PostgreSQL's processes outlived their postmaster"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _start(server: pgserver.PgServer, options: str) -> None:
    """Start again on the same data directory, port and options (after a kill: crash recovery)."""
    _pg_ctl(server, "-l", str(server.root / "server.log"), "-o", options, "-w", "start")


def _options(server: pgserver.PgServer) -> str:
    """The running server's own command-line options, from ``postmaster.opts``."""
    argv = shlex.split((server.data / "postmaster.opts").read_text())[1:]
    at = argv.index("-D")
    return shlex.join(argv[:at] + argv[at + 2 :])


@pytest.fixture(scope="module")
def pg() -> Iterator[pgserver.PgServer]:
    """A server of this module's own: the others' session server must never go down."""
    server = pgserver.start(durable=False, max_connections=100)
    try:
        yield server
    finally:
        if (server.data / "postmaster.pid").exists():
            _signal_all(server, signal.SIGCONT)  # never leave it frozen
        server.stop()


@pytest.fixture(scope="module")
def on_pg(tmp_path_factory: pytest.TempPathFactory, pg: pgserver.PgServer) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("db-outage") / "home"
    home.mkdir()
    base = make_settings(home)
    s = base.model_copy(
        update={
            "audit": base.audit.model_copy(update={"db_url": pg.create_database("outage")}),
            # The follower polls the registry (and reads key pins) during every outage.
            "serving": base.serving.model_copy(update={"reload_poll_s": 1.0}),
        }
    )
    yield from _serve(s)


@dataclass
class Outage:
    """When the database went away and came back (monotonic times)."""

    leaving: float  # the stop began
    away: float  # it returned
    back: float  # the start began
    up: float  # it returned: the server answers
    readyz_down: dict[str, Any]
    ready_again_s: float  # from ``up`` to /readyz 200


def _outage(
    served: Served,
    go_away: Callable[[], object],
    come_back: Callable[[], object],
    seconds: float = OUTAGE_S,
) -> tuple[list[Answer], Outage]:
    with Traffic(served) as traffic:
        time.sleep(1.5)
        leaving = time.monotonic()
        go_away()
        away = time.monotonic()
        deadline = away + seconds + 5
        while (r := served.readyz()).status_code == 200:
            assert time.monotonic() < deadline, "/readyz stayed 200 with the database away"
            time.sleep(0.1)
        readyz_down = r.json()
        time.sleep(max(0.0, away + seconds - time.monotonic()))
        back = time.monotonic()
        come_back()
        up = time.monotonic()
        deadline = up + 30
        while (r := served.readyz()).status_code != 200:
            assert time.monotonic() < deadline, f"/readyz never turned 200 again: {r.text}"
            time.sleep(0.1)
        ready_again_s = time.monotonic() - up
        time.sleep(2.0)
    return traffic.answers, Outage(leaving, away, back, up, readyz_down, ready_again_s)


def _check(served: Served, answers: list[Answer], outage: Outage) -> dict[str, Any]:
    """What every outage must show; returns the figures measured."""
    assert [a.error for a in answers if a.status is None] == []  # serving stayed up
    assert {a.status for a in answers} <= {200, 503}, {a.status for a in answers}
    slowest = max(a.done - a.sent for a in answers)
    assert slowest < REQUEST_BOUND_S, f"a request took {slowest:.1f} s"

    before = [a for a in answers if a.done < outage.leaving]
    assert before and all(a.status == 200 for a in before)
    # Whatever is answered while the database is away (a response in flight as it
    # went is given half a second) is a refusal.
    during = [a for a in answers if outage.away + 0.5 < a.done < outage.back]
    assert during and all(a.status == 503 for a in during), {a.status for a in during}
    for a in during:
        assert a.content_type == "application/json" and int(a.retry_after or 0) >= 1
        assert "platform database" in a.body["detail"] or "audit" in a.body["detail"]
    assert "platform database" in outage.readyz_down["error"]
    assert outage.readyz_down["models"] == {"diagnosis": "1"}  # the model stays loaded

    back_ok = [a for a in answers if a.sent >= outage.up and a.status == 200]
    assert back_ok, "no request succeeded after the database came back"
    first_ok = min(back_ok, key=lambda a: a.done)
    recovery_s = first_ok.done - outage.up
    assert recovery_s < RECOVERY_BOUND_S, f"first 200 only {recovery_s:.1f} s after"
    after = [a for a in answers if a.sent > first_ok.done]
    assert after and all(a.status == 200 for a in after), {a.status for a in after}
    ready = served.readyz().json()
    assert ready["ready"] and ready["error"] is None  # the follower lived through it

    _check_trail(served.settings, answers)
    return {
        "answered_200": sum(a.status == 200 for a in answers),
        "refused_503": sum(a.status == 503 for a in answers),
        "first_200_after_up_s": round(recovery_s, 3),
        "readyz_200_after_up_s": round(outage.ready_again_s, 3),
        "slowest_request_s": round(slowest, 3),
    }


def _check_trail(settings: Settings, answers: list[Answer]) -> None:
    """Every 200 is in the trail with its prediction row; the chain has no gap and no fork."""
    ok = {a.request_id for a in answers if a.status == 200}
    eng = db.engine(settings)
    t, p = db.audit_log, db.predictions
    with eng.connect() as conn:
        recorded = {
            rid: (status, route)
            for rid, status, route in conn.execute(
                select(t.c.request_id, t.c.status, t.c.route).where(t.c.kind == "request")
            )
        }
        predicted = {rid for (rid,) in conn.execute(select(p.c.request_id))}
    missing = [rid for rid in ok if recorded.get(rid) != (200, "/predict")]
    assert missing == [], f"{len(missing)} answers of 200 have no audit record"
    assert ok <= predicted
    report = audit.verify(settings)
    assert report.ok, report.problems


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_postgresql_away_refuses_with_503_and_serving_recovers_alone(
    on_pg: Served, pg: pgserver.PgServer, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    options = _options(pg)
    go_away = (lambda: _stop(pg)) if how == "stop" else (lambda: _kill(pg))
    answers, outage = _outage(on_pg, go_away, lambda: _start(pg, options))
    figures = _check(on_pg, answers, outage)
    print(f"\nPostgreSQL {how} for {OUTAGE_S:g} s: {figures}")
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "Exception in ASGI application" in m]
    # The operator reads one line when the outage starts and one when it ends.
    assert sum(m.startswith("audit commit of") for m in messages) == 1, messages
    assert sum(m.startswith("audit trail writable again") for m in messages) == 1


def test_postgresql_frozen_no_request_hangs(on_pg: Served, pg: pgserver.PgServer) -> None:
    """SIGSTOP: connections open and nothing answers; requests are refused in bounded time."""
    answers, outage = _outage(
        on_pg,
        lambda: _signal_all(pg, signal.SIGSTOP),
        lambda: _signal_all(pg, signal.SIGCONT),
        FROZEN_S,
    )
    figures = _check(on_pg, answers, outage)
    # A commit the frozen server held finishes when it resumes: its requests were
    # refused already, so the trail may name them (never the other way round).
    ok = {a.request_id for a in answers if a.status == 200}
    refused = {a.request_id for a in answers if a.status == 503}
    rows = audit.query(on_pg.settings, limit=1_000_000)
    late = sum(1 for r in rows if r["request_id"] in refused and r["request_id"] not in ok)
    print(f"\nPostgreSQL frozen for {FROZEN_S:g} s: {figures}, refused but recorded: {late}")
