"""Durable audit records per second: SQLite (default, and fsync) against PostgreSQL.

Each writer process runs the serving path's :class:`aipaas.audit.AuditWriter`
(group commit) with ``CLIENTS`` threads standing in for concurrent requests:
each submits a record and waits until it is committed, as a request waits
before its response is sent. Measured with one writer process and with
three (serving replicas on one database: every append takes the database's
lock), for ``SECONDS`` each, on:

- SQLite, the default (``synchronous=NORMAL``: a commit is in the WAL, it
  survives the process dying, not a power cut);
- SQLite with ``audit.fsync`` true (``synchronous=FULL``: fsync per group commit);
- PostgreSQL 15 on loopback, started here from Debian's binaries with its
  durable defaults (fsync on, ``synchronous_commit`` on).

After each run the chain is verified (one chain, no gaps). Run
``uv run python -m bench.bench_audit`` (or ``make bench``); writes
``bench/results/audit.json``.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import print_table, write_results

CLIENTS = 16
SECONDS = 5.0


def _settings(home: Path, url: str, fsync: bool) -> Any:
    from aipaas.settings import Settings

    return Settings(_env_file=None, home=home, audit={"db_url": url, "fsync": fsync})


def _writer_process(home: str, url: str, fsync: bool, go: Any, seconds: float, out: Any) -> None:
    """One serving process: ``CLIENTS`` request threads on one group-commit writer."""
    from aipaas import audit

    settings = _settings(Path(home), url, fsync)
    writer = audit.AuditWriter(settings)
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    go.wait()
    deadline = time.perf_counter() + seconds

    def client(i: int) -> None:
        mine = latencies[i]
        n = 0
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            rec = audit.AuditRecord(request_id=f"{i}-{n}", key_id="bench", route="/predict")
            writer.submit(rec).result(60)
            mine.append((time.perf_counter() - t) * 1000.0)
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    out.put(([x for lat in latencies for x in lat], writer.batches))


def run(home: Path, url: str, fsync: bool, processes: int) -> dict[str, Any]:
    from aipaas import audit, db

    settings = _settings(home, url, fsync)
    db.upgrade(settings)  # migrated before the clock starts
    before = audit.verify(settings).records
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_writer_process, args=(str(home), url, fsync, go, SECONDS, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    time.sleep(4.0)  # every process has imported aipaas and opened its connection
    go.set()
    results = [out.get(timeout=SECONDS + 120) for _ in procs]
    for p in procs:
        p.join(60)
    latencies = [x for lat, _ in results for x in lat]
    batches = sum(b for _, b in results)
    report = audit.verify(settings)
    records = report.records - before
    assert report.ok and records == len(latencies), report.problems
    return {
        "records": records,
        "records_per_s": records / SECONDS,
        "records_per_commit": records / max(batches, 1),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "chain_ok": report.ok,
    }


def main() -> None:
    from aipaas import db
    from aipaas.ops import pgserver

    server = pgserver.start(durable=True)
    results: dict[str, Any] = {
        "clients_per_process": CLIENTS,
        "seconds": SECONDS,
        "runs": [],
    }
    try:
        with tempfile.TemporaryDirectory(prefix="aipaas-bench-audit-") as tmp:
            backends = [
                ("sqlite", "sqlite (synchronous NORMAL, default)", False),
                ("sqlite", "sqlite (audit.fsync: synchronous FULL)", True),
                ("postgresql", "postgresql 15 (fsync, synchronous_commit on)", False),
            ]
            for i, (kind, label, fsync) in enumerate(backends):
                for processes in (1, 3):
                    home = Path(tmp) / f"h{i}-{processes}"
                    home.mkdir()
                    if kind == "sqlite":
                        url = f"sqlite:///{home / 'platform.db'}"
                    else:
                        url = server.create_database(f"bench_{processes}")
                    figures = run(home, url, fsync, processes)
                    db.dispose(_settings(home, url, fsync))
                    results["runs"].append({"backend": label, "processes": processes, **figures})
                    print(f"{label}, {processes} process(es): {figures['records_per_s']:.0f}/s")
    finally:
        server.stop()
    print_table(
        ["backend", "writer processes", "records/s", "records/commit", "p50 ms", "p99 ms"],
        [
            [
                r["backend"],
                r["processes"],
                r["records_per_s"],
                r["records_per_commit"],
                r["p50_ms"],
                r["p99_ms"],
            ]
            for r in results["runs"]
        ],
        title=f"durable audit records ({CLIENTS} clients per process, {SECONDS:.0f} s each)",
    )
    path = write_results("audit", results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
