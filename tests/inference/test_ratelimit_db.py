"""Rate limits across hosts: token buckets in the platform database (PostgreSQL).

Real PostgreSQL throughout: the session's server (a fresh database per
test) and, for the outage, a server of this module's own that the test
stops and starts. "Two hosts" are two Python processes with different homes
(so no shared bucket file) and one database; what they were granted is
counted, and what was allowed is computed from the time they actually
hammered, never assumed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aipaas import db
from aipaas.db import DatabaseUnavailableError
from aipaas.exceptions import ConfigurationError
from aipaas.inference.keys import RateLimiter
from aipaas.inference.ratelimit import DatabaseRateLimiter, SharedRateLimiter, limiter_for
from aipaas.ops import pgserver
from aipaas.settings import Settings
from tests.conftest import make_settings

pytestmark = [pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]

# One "host": a serving process's limiter, hammering one key from the start
# time it is sent (on this machine's one clock); prints what it was granted.
HOST = textwrap.dedent(
    """
    import json, sys, time
    from aipaas.inference.ratelimit import limiter_for
    from aipaas.settings import get_settings

    duration, rate = float(sys.argv[1]), sys.argv[2]
    limiter = limiter_for(get_settings())
    assert type(limiter).__name__ == "DatabaseRateLimiter", type(limiter)
    limiter.acquire("warm-up", "1000/s")  # the connection, before the clock starts
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    while time.time() < start:
        time.sleep(0.0005)
    granted = tries = 0
    first = time.time()
    while (now := time.time()) < start + duration:
        tries += 1
        granted += limiter.acquire("shared", rate) == 0.0
        time.sleep(0.002)
    print(json.dumps({"granted": granted, "tries": tries, "first": first, "last": now}))
    """
)


def _on(home: Path, url: str, **serving: object) -> Settings:
    s = make_settings(home)
    return s.model_copy(
        update={
            "audit": s.audit.model_copy(update={"db_url": url}),
            "serving": s.serving.model_copy(update=serving),
        }
    )


def _host_env(home: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIPAAS_")}
    return {**env, "AIPAAS_HOME": str(home), "AIPAAS_AUDIT__DB_URL": url}


def _row(settings: Settings, key_id: str) -> tuple[float, float, float]:
    """The key's (tokens, last, the database's now)."""
    with db.engine(settings).connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT tokens, last, extract(epoch FROM clock_timestamp())::float8 "
            "FROM rate_buckets WHERE key_id = %(k)s",
            {"k": key_id},
        ).one()
    return float(found[0]), float(found[1]), float(found[2])


def test_two_hosts_share_one_rate(tmp_path: Path, pg_url: str) -> None:
    rate, per_s, burst, duration = "20/s", 20.0, 20.0, 3.0
    DatabaseRateLimiter(rate, _on(tmp_path / "setup", pg_url)).close()  # schema at head
    hosts = [
        subprocess.Popen(
            [sys.executable, "-c", HOST, str(duration), rate],
            cwd=tmp_path,
            env=_host_env(tmp_path / f"host-{i}", pg_url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for host in hosts:  # both up and connected before the clock starts
        assert host.stdout is not None
        if host.stdout.readline().strip() != "ready":
            pytest.fail(f"a host did not start: {host.communicate(timeout=30)[1][-2000:]}")
    start = time.time() + 0.2
    for host in hosts:
        assert host.stdin is not None
        host.stdin.write(f"{start}\n")
        host.stdin.flush()
    reports = []
    for host in hosts:
        out, err = host.communicate(timeout=60)
        assert host.returncode == 0, err[-2000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert not any((tmp_path / f"host-{i}" / "serving" / "ratelimits.bin").exists() for i in (0, 1))
    granted = sum(r["granted"] for r in reports)
    elapsed = max(r["last"] for r in reports) - min(r["first"] for r in reports)
    allowed = per_s * elapsed + burst
    # Each host alone tried far more than the rate: the limit, not the load, decided.
    assert all(r["tries"] > 3 * per_s * duration / 2 for r in reports), reports
    assert all(r["granted"] > 0 for r in reports), reports
    assert 0.9 * allowed <= granted <= 1.05 * allowed, (granted, allowed, reports)


def test_refill_comes_from_the_database_clock(tmp_path: Path, pg_url: str) -> None:
    settings = _on(tmp_path, pg_url)
    limiter = DatabaseRateLimiter("10/s", settings)
    try:
        # A new key starts with a full bucket: a burst of 10; then what time refilled.
        t0 = time.monotonic()
        assert [limiter.acquire("k", None) for _ in range(10)] == [0.0] * 10
        more = 0
        while (wait := limiter.acquire("k", None)) == 0.0:
            more += 1
        assert more <= 10 * (time.monotonic() - t0) + 1
        tokens, last, now = _row(settings, "k")
        assert 0.0 <= now - last < 5.0  # written with the server's time
        # A denied check takes nothing and says when the next token comes.
        assert 0.0 < wait <= 0.1
        assert wait == pytest.approx((1.0 - tokens) / 10, abs=1e-6)
        time.sleep(wait + 0.02)
        assert limiter.acquire("k", None) == 0.0

        # Empty 0.55 s ago on the server's clock (this process's clock plays no
        # part): the next check finds exactly what 10/s refilled since, minus one.
        db_now = _row(settings, "k")[2]
        with db.engine(settings).begin() as conn:
            conn.exec_driver_sql(
                "UPDATE rate_buckets SET tokens = 0, last = %(t)s WHERE key_id = 'k'",
                {"t": db_now - 0.55},
            )
        assert limiter.acquire("k", None) == 0.0
        tokens, last, _ = _row(settings, "k")
        assert tokens == pytest.approx(min(10.0, (last - db_now + 0.55) * 10) - 1, abs=1e-6)

        # Real time: what 0.3 s refills, and no more than the time that passed.
        while limiter.acquire("k", None) == 0.0:
            pass
        t0 = time.monotonic()
        time.sleep(0.3)
        granted = 0
        while limiter.acquire("k", None) == 0.0:
            granted += 1
        assert 3 <= granted <= 10 * (time.monotonic() - t0) + 1

        # A key's own rate: "60/m" is one a second, a burst of one.
        assert limiter.acquire("slow", "60/m") == 0.0
        assert 0.5 < limiter.acquire("slow", "60/m") <= 1.0
    finally:
        limiter.close()


def test_a_cost_above_the_burst_is_never_granted(tmp_path: Path, pg_url: str) -> None:
    limiter = DatabaseRateLimiter("5/s", _on(tmp_path, pg_url))
    try:
        assert limiter.acquire("batch", None, cost=8.0) == pytest.approx(3 / 5, abs=0.01)
        assert limiter.acquire("batch", None, cost=5.0) == 0.0  # nothing taken by the refusal
    finally:
        limiter.close()


def test_bad_rates_are_refused_clearly(tmp_path: Path, pg_url: str) -> None:
    settings = _on(tmp_path, pg_url)
    with pytest.raises(ConfigurationError, match=r"rate 'fast' is not like '50/s'"):
        DatabaseRateLimiter("fast", settings)
    limiter = DatabaseRateLimiter("50/s", settings)
    try:
        with pytest.raises(ConfigurationError, match=r"rate '0/s' must be positive"):
            limiter.acquire("k", "0/s")
        with pytest.raises(ConfigurationError, match=r"rate '5 per second' is not like"):
            limiter.acquire("k", "5 per second")
    finally:
        limiter.close()
    with pytest.raises(ConfigurationError, match=r"rate '50/x' is not like"):
        limiter_for(_on(tmp_path, pg_url, default_rate="50/x"))


def test_the_store_follows_the_setting_and_the_database(tmp_path: Path, pg_url: str) -> None:
    sqlite = f"sqlite:///{tmp_path / 'platform.db'}"

    def chosen(url: str, **serving: object) -> type:
        limiter = limiter_for(_on(tmp_path, url, **serving))
        if isinstance(limiter, DatabaseRateLimiter):
            limiter.close()
        return type(limiter)

    assert chosen(sqlite) is RateLimiter
    assert chosen(sqlite, replicas=2) is SharedRateLimiter
    assert chosen(pg_url) is DatabaseRateLimiter  # auto: PostgreSQL may be shared by hosts
    assert chosen(pg_url, rate_limit_store="host") is RateLimiter
    assert chosen(pg_url, rate_limit_store="host", replicas=2) is SharedRateLimiter
    assert chosen(pg_url, rate_limit_store="database") is DatabaseRateLimiter
    with pytest.raises(ConfigurationError, match=r"'database' needs the platform database on Po"):
        chosen(sqlite, rate_limit_store="database")
    with pytest.raises(ConfigurationError, match=r"'redis' is not one of auto, host, database"):
        chosen(pg_url, rate_limit_store="redis")


# -- the database away ---------------------------------------------------------------


@pytest.fixture(scope="module")
def own_pg() -> Iterator[pgserver.PgServer]:
    """A server of this module's own: the test stops it, which the session's must never be."""
    server = pgserver.start(durable=False, max_connections=50)
    try:
        yield server
    finally:
        server.stop()


def _pg_ctl(server: pgserver.PgServer, *args: str) -> None:
    argv = [str(server.bin / "pg_ctl"), "-D", str(server.data), *args]
    as_owner = ["runuser", "-u", pgserver.RUN_AS, "--", *argv] if os.geteuid() == 0 else argv
    subprocess.run(as_owner, check=True, capture_output=True, timeout=60)


def test_database_away_fails_closed_then_recovers(
    tmp_path: Path, own_pg: pgserver.PgServer
) -> None:
    settings = _on(tmp_path, own_pg.url())
    limiter = DatabaseRateLimiter("5/s", settings)
    try:
        assert limiter.acquire("k", None) == 0.0
        before, at, _ = _row(settings, "k")

        # The server cuts every connection (a restart, a failover): the check
        # reconnects by itself and counts on; no caller sees it.
        own_pg._sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = 'postgres' AND pid <> pg_backend_pid()"
        )
        assert limiter.acquire("k", None) == 0.0
        tokens, last, _ = _row(settings, "k")
        assert tokens == pytest.approx(min(5.0, before + 5.0 * (last - at)) - 1.0, abs=1e-6)

        # Down: refused (serving's 503), quickly, never granted blind; a
        # serving process starting meanwhile builds its limiter all the same.
        opts = (own_pg.data / "postmaster.opts").read_text().split(maxsplit=1)[1].strip()
        db.dispose(settings)
        _pg_ctl(own_pg, "-m", "fast", "-w", "stop")
        try:
            late = DatabaseRateLimiter("5/s", settings)
            for check in (limiter, limiter, late):
                t0 = time.monotonic()
                with pytest.raises(DatabaseUnavailableError, match="unreachable") as raised:
                    check.acquire("k", None)
                assert time.monotonic() - t0 < 2.0
                assert "127.0.0.1" not in str(raised.value)  # the host stays in the logs
                assert raised.value.reason
        finally:
            log = str(own_pg.root / "server.log")
            _pg_ctl(own_pg, "-l", log, "-o", _options(opts), "-w", "start")

        # Back: both limiters answer again, from the one bucket the key had.
        before, at, _ = _row(settings, "k")
        assert limiter.acquire("k", None) == 0.0
        assert late.acquire("k", None) == 0.0
        tokens, last, _ = _row(settings, "k")
        two_taken = min(5.0, before + 5.0 * (last - at)) - 2.0
        # (more only by what refilled between the two checks, had the bucket been full)
        assert two_taken - 1e-6 <= tokens <= two_taken + 0.5
        late.close()
    finally:
        limiter.close()
        db.dispose(settings)


def _options(postmaster_opts: str) -> str:
    """``postmaster.opts`` (the server binary, then its quoted arguments) as ``pg_ctl -o``."""
    import shlex

    return " ".join(shlex.quote(a) for a in shlex.split(postmaster_opts) if a)


def test_the_table_is_unlogged_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    settings = _on(tmp_path, pg_url)
    with db.engine(settings).connect() as conn:
        persistence = conn.exec_driver_sql(
            "SELECT relpersistence FROM pg_class WHERE relname = 'rate_buckets'"
        ).scalar()
    assert persistence == "u"  # no WAL, no fsync per check
