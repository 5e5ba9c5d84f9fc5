from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time

import pytest
from pydantic import SecretStr

from aipaas import audit, db
from aipaas.exceptions import AuditIntegrityError
from tests.support.postgres import execute, stored_bytes


@pytest.fixture
def settings(platform_settings):
    """Every test here that touches the platform database runs on SQLite and on PostgreSQL."""
    return platform_settings


@pytest.fixture
def trail(settings):
    """Ten request records written through the group-commit writer."""
    writer = audit.AuditWriter(settings, commit_window_ms=1)
    futures = [
        writer.submit(
            audit.AuditRecord(
                request_id=f"r{i}", key_id="k1", route="/predict", status=200, latency_ms=1.0 + i
            )
        )
        for i in range(10)
    ]
    for f in futures:
        f.result(timeout=10)
    writer.close()
    assert audit.verify(settings).ok
    return settings


def _sql(settings, statement, *args):
    execute(settings, statement, *args)


def test_group_commit_batches_and_chains(settings):
    writer = audit.AuditWriter(settings, commit_window_ms=20)
    futures = [writer.submit(audit.AuditRecord(request_id=f"r{i}")) for i in range(50)]
    for f in futures:
        f.result(timeout=10)
    writer.close()
    assert writer.records == 50
    assert writer.batches < 50  # grouped, not one commit per record
    report = audit.verify(settings)
    assert report.ok and report.records == 50
    rows = audit.tail(settings, 50)
    assert [r["seq"] for r in rows] == list(range(1, 51))
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(rows, rows[1:], strict=False))


def test_verify_catches_an_edited_record(trail):
    _sql(trail, "UPDATE audit_log SET status = 500 WHERE seq = 4")
    report = audit.verify(trail)
    assert not report.ok
    assert any("seq 4" in p and "edited" in p for p in report.problems)
    with pytest.raises(AuditIntegrityError, match="seq 4"):
        audit.verify_or_raise(trail)


def test_verify_catches_a_deleted_record(trail):
    _sql(trail, "DELETE FROM audit_log WHERE seq = 6")
    problems = audit.verify(trail).problems
    assert any("6..6 are missing" in p for p in problems)
    assert any(p.startswith("seq 7: prev_hash") for p in problems)


def test_verify_catches_records_cut_off_the_end(trail):
    _sql(trail, "DELETE FROM audit_log WHERE seq >= 9")
    problems = audit.verify(trail).problems
    assert any("9..10 are missing at the end" in p for p in problems)


def test_verify_of_a_trail_that_grows_while_it_is_walked(trail, monkeypatch):
    """A running platform commits while `aipaas audit verify` walks: no false truncation."""
    walk = audit._iter_rows

    def walk_then_commit(settings, chunk=5000):
        yield from walk(settings, chunk)
        audit.append_event(settings, "test.late", {})  # after the walk read past the end

    monkeypatch.setattr(audit, "_iter_rows", walk_then_commit)
    report = audit.verify(trail)
    assert report.ok and report.records == 10, report.problems
    monkeypatch.undo()
    assert audit.verify(trail).records == 11  # the late record is on the chain
    # The end is still checked: cut off and growing, it is reported.
    _sql(trail, "DELETE FROM audit_log WHERE seq >= 10")
    monkeypatch.setattr(audit, "_iter_rows", walk_then_commit)
    assert any("missing at the end" in p for p in audit.verify(trail).problems)


def test_an_edit_with_a_recomputed_chain_still_fails_without_the_key(trail):
    rows = audit.tail(trail, 10)
    rows[2]["status"] = 500
    prev = rows[1]["hash"]
    for row in rows[2:]:  # the forger rewrites the rest of the chain with a guessed key
        row["prev_hash"] = prev
        row["hash"] = prev = audit.record_hash(b"guessed", row)
        _sql(
            trail,
            "UPDATE audit_log SET status=?, prev_hash=?, hash=? WHERE seq=?",
            row["status"],
            row["prev_hash"],
            row["hash"],
            row["seq"],
        )
    assert any(p.startswith("seq 3:") and "edited" in p for p in audit.verify(trail).problems)


def test_verify_catches_an_inserted_record(trail):
    # Make room after seq 5 by shifting later records, then insert a forged one.
    _sql(trail, "UPDATE audit_log SET seq = seq + 100 WHERE seq > 5")
    _sql(trail, "UPDATE audit_log SET seq = seq - 99 WHERE seq > 100")
    row = audit.tail(trail, 1)[0]
    forged = dict(row, seq=6, request_id="forged", prev_hash="f" * 64)
    forged["hash"] = audit.record_hash(audit.chain_key(trail), forged)
    cols = ",".join(forged)
    _sql(
        trail,
        f"INSERT INTO audit_log ({cols}) VALUES ({','.join('?' * len(forged))})",
        *forged.values(),
    )
    problems = audit.verify(trail).problems
    assert any(p.startswith("seq 6: prev_hash") for p in problems)
    assert any(p.startswith("seq 7: prev_hash") for p in problems)


def test_verify_catches_reordered_records(trail):
    _sql(trail, "UPDATE audit_log SET seq = -1 WHERE seq = 3")
    _sql(trail, "UPDATE audit_log SET seq = 3 WHERE seq = 4")
    _sql(trail, "UPDATE audit_log SET seq = 4 WHERE seq = -1")
    problems = audit.verify(trail).problems
    assert any(p.startswith("seq 3:") for p in problems)
    assert any(p.startswith("seq 4:") for p in problems)


def test_admin_events_from_another_writer_join_the_same_chain(trail):
    audit.append_event(trail, "key.created", {"name": "x"}, key_id="k9")
    rows = audit.tail(trail, 2)
    assert rows[-1]["event"] == "key.created" and rows[-1]["seq"] == 11
    assert audit.verify(trail).ok


def test_input_hmac_is_keyed_and_canonical():
    a = audit.input_hmac(b"k", b'{"b": 1, "a": 2}')
    assert a == audit.input_hmac(b"k", b'{"a":2,"b":1}')
    assert a != audit.input_hmac(b"other", b'{"a":2,"b":1}')
    assert audit.input_hmac(b"k", b"not json") != a


def test_query_by_key_and_time(trail):
    audit.append_event(trail, "key.revoked", key_id="k2")
    assert len(audit.query(trail, key_id="k1")) == 10
    assert [r["event"] for r in audit.query(trail, key_id="k2")] == ["key.revoked"]
    first = audit.tail(trail, 11)[0]["ts"]
    from datetime import datetime

    assert len(audit.query(trail, until=datetime.fromisoformat(first))) == 0


def test_a_second_process_appending_mid_stream_does_not_fork_the_chain(settings):
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    writer.submit(audit.AuditRecord(request_id="a")).result(10)
    audit.append_event(settings, "key.created", key_id="k")  # the CLI, elsewhere
    writer.submit(audit.AuditRecord(request_id="b")).result(10)  # its cached tail is stale
    writer.close()
    rows = audit.tail(settings, 10)
    assert [(r["seq"], r["request_id"] or r["event"]) for r in rows] == [
        (1, "a"),
        (2, "key.created"),
        (3, "b"),
    ]
    assert audit.verify(settings).ok


def test_prediction_records_are_the_predictions_table(settings):
    assert [f.name for f in dataclasses.fields(audit.PredictionRecord)] == [
        c.name for c in db.predictions.columns
    ]
    rows = [{"a": 1.5}, {"a": -1.0}]
    kept = audit.prediction_records("r", "m", "2", rows, ["x", 3], log_inputs=True)
    dropped = audit.prediction_records("s", "m", "2", rows, ["x", 3], log_inputs=False)
    assert [(p.row, p.output, p.input) for p in kept] == [
        (0, '"x"', '{"a":1.5}'),
        (1, "3", '{"a":-1.0}'),
    ]
    assert [p.input for p in dropped] == [None, None]
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    writer.submit(audit.AuditRecord(request_id="r"), kept + dropped).result(10)
    writer.close()
    with db.engine(settings).connect() as conn:
        stored = [
            tuple(r)
            for r in conn.exec_driver_sql(
                'SELECT request_id, "row", input FROM predictions ORDER BY 1, 2'
            )
        ]
    assert stored == [("r", 0, '{"a":1.5}'), ("r", 1, '{"a":-1.0}'), ("s", 0, None), ("s", 1, None)]


def test_query_by_end_user_hashes_the_raw_id_with_the_audit_key(settings):
    alice = audit.end_user_pseudonym(settings, "alice@example.com")
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    for rid, user in [
        ("a1", alice),
        ("b1", audit.end_user_pseudonym(settings, "bob")),
        ("n", None),
    ]:
        writer.submit(audit.AuditRecord(request_id=rid, key_id="k1", end_user=user)).result(10)
    writer.submit(audit.AuditRecord(request_id="a2", key_id="k2", end_user=alice)).result(10)
    writer.close()
    mine = audit.query(settings, end_user="alice@example.com", newest_first=False)
    assert [(r["request_id"], r["end_user"]) for r in mine] == [("a1", alice), ("a2", alice)]
    assert [
        r["request_id"] for r in audit.query(settings, end_user="alice@example.com", key_id="k2")
    ] == ["a2"]
    assert audit.query(settings, end_user="carol") == []
    stored = stored_bytes(settings)  # the SQLite file and its WAL, or every PostgreSQL row
    assert alice.encode() in stored and b"alice@example.com" not in stored
    other = settings.model_copy(
        update={"audit": settings.audit.model_copy(update={"hmac_key": SecretStr("another")})}
    )
    assert audit.end_user_pseudonym(other, "alice@example.com") != alice  # keyed
    assert audit.verify(settings).ok


WRITER = """
import os, sys, time
from pathlib import Path
from aipaas import audit
from aipaas.settings import get_settings

settings = get_settings()
writer = audit.AuditWriter(settings, commit_window_ms=1)
go = Path(sys.argv[1])
(go.parent / f"ready-{sys.argv[2]}").touch()  # imported and connected: start together
while not go.exists():
    time.sleep(0.005)
for wave in range(int(sys.argv[3]) // 10):  # ten requests in flight at a time
    futures = [
        writer.submit(audit.AuditRecord(request_id=f"{os.getpid()}-{wave}-{i}", key_id=sys.argv[2]))
        for i in range(10)
    ]
    for f in futures:
        f.result(60)
writer.close()
print(writer.batches, writer.records)
"""


def test_writers_in_three_processes_extend_one_chain(settings, tmp_path):
    """Serving replicas on one database: each appends under the database's lock, none forks."""
    import os
    import subprocess
    import sys

    from tests.conftest import settings_env

    db.engine(settings)  # migrated once here, so the writers race only on appends
    n = 300
    go = tmp_path / "go"
    env = {**os.environ, **settings_env(settings)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(go), f"w{i}", str(n)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 120  # imports take seconds on a loaded machine
    while len(list(tmp_path.glob("ready-w*"))) < 3:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        batches, records = map(int, out.split())
        assert records == n and batches < n  # group commit still batches
    report = audit.verify(settings)
    assert report.ok, report.problems
    assert report.records == 3 * n
    rows = audit.query(settings, limit=3 * n, newest_first=False)
    assert [r["seq"] for r in rows] == list(range(1, 3 * n + 1))  # no gaps, no fork
    assert {r["key_id"] for r in rows} == {"w0", "w1", "w2"}
    # The writers interleaved: the chain is one, not three runs one after another.
    switches = sum(a["key_id"] != b["key_id"] for a, b in zip(rows, rows[1:], strict=False))
    assert switches > 2


def test_verify_catches_an_edited_or_deleted_head_anchor(trail):
    _sql(trail, "UPDATE audit_head SET seq = 12")  # claim two more records than there are
    assert any("audit_head" in p and "MAC" in p for p in audit.verify(trail).problems)
    _sql(trail, "DELETE FROM audit_head")
    assert any("head anchor" in p and "missing" in p for p in audit.verify(trail).problems)


def test_cutting_the_end_and_moving_the_head_back_is_caught(trail):
    """Without the key the head cannot be rewritten to the new, shorter end."""
    rows = audit.tail(trail, 10)
    _sql(trail, "DELETE FROM audit_log WHERE seq >= 9")
    _sql(trail, "UPDATE audit_head SET seq = 8, hash = ?", rows[7]["hash"])
    problems = audit.verify(trail).problems
    assert any("does not match its MAC" in p for p in problems), problems


def test_the_writer_reconnects_after_the_database_restarts(home, pg_url, pg_server):
    """A PostgreSQL restart cuts the writer's connection; the next batch reconnects."""
    from tests.conftest import make_settings

    base = make_settings(home)
    settings = base.model_copy(update={"audit": base.audit.model_copy(update={"db_url": pg_url})})
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    writer.submit(audit.AuditRecord(request_id="before")).result(10)
    pg_server.restart()
    writer.submit(audit.AuditRecord(request_id="after")).result(30)
    writer.close()
    assert [r["request_id"] for r in audit.tail(settings, 5)] == ["before", "after"]
    assert audit.verify(settings).ok


class CommitCutter:
    """A loopback TCP proxy in front of PostgreSQL: a network that fails at the worst moment.

    Once :meth:`arm`-ed, the next ``COMMIT`` a client sends reaches the server,
    which commits, and then the connection is cut before the server's answer
    gets back: the client cannot tell whether its transaction landed. With
    :attr:`down` set, every connection is cut and new ones are closed at once,
    as a database host that went away.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._armed = threading.Event()
        self.down = threading.Event()
        self.cuts = 0
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        self._armed.set()

    def go_down(self) -> None:
        self.down.set()
        for pair in list(self._pairs):
            self._close(pair)

    def close(self) -> None:
        self.go_down()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down.is_set():
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self._upstream))
            pair = (client, server)
            self._pairs.append(pair)
            hold = threading.Event()  # set: the server's answers no longer reach the client
            threading.Thread(target=self._to_server, args=(pair, hold), daemon=True).start()
            threading.Thread(target=self._to_client, args=(pair, hold), daemon=True).start()

    def _to_server(self, pair: tuple[socket.socket, socket.socket], hold: threading.Event) -> None:
        client, server = pair
        try:
            while data := client.recv(65536):
                cut = self._armed.is_set() and b"COMMIT\x00" in data
                if cut:
                    self._armed.clear()
                    hold.set()
                server.sendall(data)
                if cut:
                    time.sleep(0.2)  # the server commits meanwhile
                    self.cuts += 1
                    self._close(pair)
                    return
        except OSError:
            pass
        self._close(pair)

    def _to_client(self, pair: tuple[socket.socket, socket.socket], hold: threading.Event) -> None:
        client, server = pair
        try:
            while data := server.recv(65536):
                if not hold.is_set():
                    client.sendall(data)
        except OSError:
            pass
        self._close(pair)

    @staticmethod
    def _close(pair: tuple[socket.socket, socket.socket]) -> None:
        for s in pair:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture
def cutter(home, pg_url, pg_server):
    """Settings whose platform database is reached through a :class:`CommitCutter`."""
    from tests.conftest import make_settings

    proxy = CommitCutter(pg_server.port)
    base = make_settings(home)
    url = pg_url.replace(f":{pg_server.port}/", f":{proxy.port}/")
    settings = base.model_copy(update={"audit": base.audit.model_copy(update={"db_url": url})})
    yield proxy, settings
    db.dispose(settings)
    proxy.close()


def test_a_commit_whose_answer_was_lost_is_not_written_twice(cutter):
    """The retry finds the batch already committed: one record, one prediction row, no error."""
    proxy, settings = cutter
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    writer.submit(audit.AuditRecord(request_id="before")).result(10)
    proxy.arm()
    row = audit.prediction_records("lost", "m", "1", [{"x": 1}], ["y"], log_inputs=False)
    writer.submit(audit.AuditRecord(request_id="lost", status=200), row).result(30)
    writer.submit(audit.AuditRecord(request_id="after")).result(10)
    writer.close()
    assert proxy.cuts == 1
    assert [r["request_id"] for r in audit.tail(settings, 10)] == ["before", "lost", "after"]
    assert audit.verify(settings).ok
    with db.engine(settings).connect() as conn:
        rows = conn.exec_driver_sql("SELECT request_id FROM predictions").all()
    assert [r[0] for r in rows] == ["lost"]


def test_the_writer_refuses_at_once_while_the_database_is_away_and_recovers(cutter):
    """Each batch fails fast with DatabaseUnavailableError; the first one after reconnects."""
    proxy, settings = cutter
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    writer.submit(audit.AuditRecord(request_id="before")).result(10)
    proxy.go_down()
    for i in range(3):
        started = time.monotonic()
        with pytest.raises(db.DatabaseUnavailableError):
            writer.submit(audit.AuditRecord(request_id=f"refused-{i}")).result(10)
        assert time.monotonic() - started < 2.0  # refused, not retried for seconds
    assert writer.failing_since is not None and writer.last_error
    proxy.down.clear()
    writer.submit(audit.AuditRecord(request_id="after")).result(10)
    writer.close()
    assert writer.failing_since is None
    assert [r["request_id"] for r in audit.tail(settings, 10)] == ["before", "after"]
    assert audit.verify(settings).ok
