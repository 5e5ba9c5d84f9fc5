"""Rate limits across hosts: the host's bucket file against PostgreSQL's ``rate_buckets``.

Loopback only, bounded (about 40 s):

1. Per check, in one process and in 4 threads of it, one key at a rate it
   never reaches (every check is granted, so each one writes): p50/p99 in
   µs and checks per second, for the host-shared file (a mapped file under
   a ``flock``, :class:`aipaas.inference.ratelimit.SharedBuckets`) and the
   database store (one ``INSERT .. ON CONFLICT .. RETURNING`` per check,
   :class:`aipaas.inference.ratelimit.DatabaseBuckets`) on a real PostgreSQL
   15 (durable: fsync and synchronous commit on, as a team runs it; the
   table itself is UNLOGGED).
2. Accuracy: two processes standing for two hosts (different homes, one
   PostgreSQL database) hammer one key limited to 50/s for 5 s, each in a
   tight loop; granted per second in total, after the one burst a fresh
   bucket holds (target: at most about 52/s). The same two processes on the
   host store, each with its own file (as two hosts have), show what the
   database store fixes.

On this 2-core machine PostgreSQL, the checking threads and the other
process share the cores: the database figures include the server's CPU.

Run: ``uv run python -m bench.bench_ratelimit`` (or ``make bench``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import print_table, write_results

CHECKS = {"host file": 20_000, "postgresql": 4_000}
THREADS = 4
RATE = "50/s"
PER_S = BURST = 50.0
DURATION_S = 5.0
HOSTS = 2


def _settings(home: Path, url: str) -> Any:
    from aipaas.settings import Settings

    return Settings(_env_file=None, home=home, audit={"db_url": url})  # type: ignore[call-arg]


def _run(check: Callable[[], object], n: int, threads: int) -> dict[str, float]:
    """``n`` checks spread over ``threads`` threads: latency of each, throughput of all."""
    per_thread = n // threads
    samples: list[list[float]] = [[] for _ in range(threads)]
    go = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        out = samples[i]
        go.wait()
        for _ in range(per_thread):
            t = time.perf_counter()
            check()
            out.append(time.perf_counter() - t)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    go.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    flat = sorted(s for ss in samples for s in ss)
    return {
        "p50_us": flat[len(flat) // 2] * 1e6,
        "p99_us": flat[int(len(flat) * 0.99)] * 1e6,
        "checks_per_s": len(flat) / wall,
    }


def per_check(tmp: Path, url: str) -> dict[str, dict[str, dict[str, float]]]:
    from aipaas.inference.ratelimit import DatabaseBuckets, SharedBuckets

    host = SharedBuckets(tmp / "ratelimits.bin")
    database = DatabaseBuckets(_settings(tmp / "home", url))
    stores: dict[str, Callable[[], object]] = {
        "host file": lambda: host.acquire("k", 1e9, 1e9),
        "postgresql": lambda: database.acquire("k", 1e9, 1e9),
    }
    out: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for label, check in stores.items():
            for _ in range(300):  # connections, prepared statements, page cache
                check()
            out[label] = {
                f"{threads} thread(s)": _run(check, CHECKS[label], threads)
                for threads in (1, THREADS)
            }
    finally:
        host.close()
        database.close()
    return out


def hammer(store: str, home: str, url: str, duration: float) -> None:
    """One "host": a tight loop on one key for ``duration`` s from the start time it reads.

    Prints ``ready`` once connected; the start (epoch seconds) comes on stdin.
    """
    from aipaas.inference.keys import RateLimiter
    from aipaas.inference.ratelimit import DatabaseRateLimiter, SharedRateLimiter, limits_path

    settings = _settings(Path(home), url)
    limiter: RateLimiter = (
        DatabaseRateLimiter(RATE, settings)
        if store == "postgresql"
        else SharedRateLimiter(RATE, limits_path(settings))
    )
    limiter.acquire("warm-up", "1000000/s")
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    while time.time() < start:
        time.sleep(0.0005)
    granted = tries = 0
    first = time.time()
    while (now := time.time()) < start + duration:
        tries += 1
        granted += limiter.acquire("shared", None) == 0.0
    print(json.dumps({"granted": granted, "tries": tries, "first": first, "last": now}))


def accuracy(tmp: Path, url: str, store: str) -> dict[str, float]:
    """Two processes with their own homes on one database, one key at 50/s."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bench_ratelimit",
                "hammer",
                store,
                str(tmp / f"{store}-host-{i}"),
                url,
                str(DURATION_S),
            ],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(HOSTS)
    ]
    for p in procs:  # every host up and connected before the clock starts
        assert p.stdout is not None and p.stdin is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a hammering process did not start (exit {p.wait()})")
    start = time.time() + 0.2
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(f"{start}\n")
        p.stdin.flush()
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"a hammering process failed (exit {p.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    granted = sum(r["granted"] for r in reports)
    elapsed = max(r["last"] for r in reports) - min(r["first"] for r in reports)
    return {
        "granted": granted,
        "tries": sum(r["tries"] for r in reports),
        "elapsed_s": elapsed,
        "allowed": PER_S * elapsed + BURST,
        "granted_per_s": granted / elapsed,
        "granted_per_s_after_burst": (granted - BURST) / elapsed,
        "per_host": [r["granted"] for r in reports],
    }


def main() -> None:
    from aipaas.ops import pgserver

    server = pgserver.start(durable=True)
    try:
        url = server.create_database("ratelimit")
        with tempfile.TemporaryDirectory(prefix="aipaas-bench-ratelimit-") as d:
            tmp = Path(d)
            costs = per_check(tmp, url)
            hosts = {store: accuracy(tmp, url, store) for store in ("postgresql", "host file")}
    finally:
        server.stop()
    print_table(
        ["store", "threads", "p50 µs", "p99 µs", "checks/s"],
        [
            [store, threads, r["p50_us"], r["p99_us"], r["checks_per_s"]]
            for store, runs in costs.items()
            for threads, r in runs.items()
        ],
        title="rate limiter, per check (one key, always granted)",
    )
    print_table(
        ["store", "granted", "tries", "seconds", "allowed", "granted/s", "after burst /s"],
        [
            [
                store,
                h["granted"],
                h["tries"],
                h["elapsed_s"],
                h["allowed"],
                h["granted_per_s"],
                h["granted_per_s_after_burst"],
            ]
            for store, h in hosts.items()
        ],
        title=f"{HOSTS} hosts (processes, own homes, one database), one key at {RATE}, "
        f"{DURATION_S:g} s",
    )
    db_after_burst = hosts["postgresql"]["granted_per_s_after_burst"]
    print(f"\npostgresql: {db_after_burst:.1f}/s after the burst (target: at most about 52/s)")
    write_results(
        "ratelimit",
        {
            "per_check": costs,
            "two_hosts": hosts,
            "rate": RATE,
            "duration_s": DURATION_S,
            "target_per_s": 52,
            "within_target": db_after_burst <= 52.0,
            "note": "PostgreSQL 15 durable on loopback (rate_buckets UNLOGGED); the server, "
            "the threads and the other process share the machine's cores",
        },
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["hammer"]:
        store, home, url, duration = sys.argv[2:6]
        hammer(store, home, url, float(duration))
    else:
        main()
