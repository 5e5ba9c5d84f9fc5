"""Replicas: ``aipaas serve`` with 1 vs 2 replicas, and what a shared rate limiter costs.

Two parts, loopback only, bounded:

1. The limiter alone, per check, in one process (so the figure is the
   store's own cost, not the server's): the in-process buckets used with one
   replica; the host-shared buckets (a mapped file under a ``flock``) used
   with several; and, for the choice, a per-key counter row in SQLite (WAL,
   as the platform database runs) updated with ``UPDATE ... RETURNING`` per
   request, which is what the platform database would cost. p50/p99 in µs.
2. End to end: one registered 100-tree LightGBM champion (from
   ``bench.bench_serving``), everything on (keys, limits, audit, profiling
   off), ``aipaas serve --replicas 1`` then ``--replicas 2``, one-row
   requests, ``wrk`` at 8 connections for ``BENCH_REPLICAS_DURATION_S``.
   On this 2-core machine ``wrk`` shares the cores with the replicas, so 2
   replicas can at best take what ``wrk`` leaves; the figures say so.

Run: ``uv run python -m bench.bench_replicas`` (or ``make bench``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.bench_serving import (
    Target,
    _audit,
    _free_port,
    _load,
    _stop,
    _train_champion,
    _wait_http,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "replicas.json"
# BENCH_REPLICAS_AUDIT=false: the same side by side without the audit trail
DURATION_S = int(os.environ.get("BENCH_REPLICAS_DURATION_S", "8"))
CONNS = 8
CHECKS = 20_000
MODEL = "diagnosis"


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
    }


def limiter_costs(tmp: Path) -> dict[str, dict[str, float]]:
    """Per-check cost of each store, one key at a rate it never exceeds."""
    from aipaas.inference.keys import RateLimiter
    from aipaas.inference.ratelimit import SharedBuckets

    local = RateLimiter("1000000/s")
    shared = SharedBuckets(tmp / "ratelimits.bin")
    db = sqlite3.connect(tmp / "limits.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE buckets (key TEXT PRIMARY KEY, tokens REAL, at REAL)")
    db.execute("INSERT INTO buckets VALUES ('k', 1000000.0, 0.0)")
    sql = (
        "UPDATE buckets SET tokens = min(1000000.0, tokens + (?1 - at) * 1000000.0) - 1, at = ?1 "
        "WHERE key = 'k' RETURNING tokens"
    )

    def sqlite_check() -> None:
        db.execute("BEGIN IMMEDIATE")  # the write lock the audit writer also needs
        db.execute(sql, (time.monotonic(),)).fetchone()
        db.execute("COMMIT")

    runs = {
        "local (1 replica)": lambda: local.acquire("k", None),
        "host-shared file (N replicas)": lambda: shared.acquire("k", 1e6, 1e6),
        "sqlite row UPDATE..RETURNING": sqlite_check,
    }
    out = {}
    for label, check in runs.items():
        n = CHECKS if "sqlite" not in label else CHECKS // 4
        for _ in range(200):
            check()
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            check()
            samples.append(time.perf_counter() - t)
        out[label] = _percentiles(samples)
        print(
            f"  {label:32} p50 {out[label]['p50_us']:7.1f} µs  p99 {out[label]['p99_us']:7.1f} µs"
        )
    shared.close()
    db.close()
    return out


def _serve(tmp: Path, uri: str, replicas: int, port: int) -> subprocess.Popen[bytes]:
    home = tmp / f"home-{replicas}"
    home.mkdir(exist_ok=True)
    audit = _audit(tmp)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIPAAS_")},
        "AIPAAS_HOME": str(home),
        "AIPAAS_MLFLOW__TRACKING_URI": uri,
        "AIPAAS_AUDIT__HMAC_KEY": audit["hmac_key"],
        "AIPAAS_AUDIT__DB_URL": audit["db_url"],
        "AIPAAS_SERVING__MODELS": json.dumps([MODEL]),
        "AIPAAS_SERVING__PROFILING_ENABLED": "false",
        # false: tells how much of the gap is the audit chain's one append lock
        "AIPAAS_SERVING__AUDIT_ENABLED": os.environ.get("BENCH_REPLICAS_AUDIT", "true"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-c", "from aipaas.cli import main; main()", "serve",
           "--replicas", str(replicas), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def _wait_replicas(url: str, replicas: int, timeout_s: float) -> None:
    """Fresh connections until ``replicas`` distinct pids have answered ``/readyz`` with 200."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < replicas:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {replicas} replicas ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                seen.add(r.headers.get("x-aipaas-replica") or "single")
        except OSError:
            time.sleep(0.3)


def end_to_end(tmp: Path) -> dict[str, dict[str, Any]]:
    from aipaas.inference import keys
    from aipaas.settings import Settings

    uri, _version, cols, row = _train_champion(tmp)
    body = json.dumps(dict(zip(cols, row, strict=True)))
    out = {}
    for replicas in (1, 2):
        s = Settings(_env_file=None, home=tmp / f"home-{replicas}", audit=_audit(tmp))
        key = keys.create_key(s, f"bench-{replicas}", "predict", rate="1000000/s")[1]
        port = _free_port()
        proc = _serve(tmp, uri, replicas, port)
        try:
            _wait_http(f"http://127.0.0.1:{port}/readyz", 180, proc)
            _wait_replicas(f"http://127.0.0.1:{port}/readyz", replicas, 120)
            target = Target(
                f"http://127.0.0.1:{port}/predict", body, {"Authorization": f"Bearer {key}"}
            )
            _load(target, CONNS, 2)  # warm-up
            r = _load(target, CONNS, DURATION_S)
            r["loadavg_1m"] = os.getloadavg()[0]
            out[f"{replicas} replica(s)"] = r
            print(
                f"  {replicas} replica(s) c={CONNS}  {r['rps']:7.0f} req/s  "
                f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  failed {r['failed']}  "
                f"(load {r['loadavg_1m']:.1f})",
                flush=True,
            )
        finally:
            _stop(proc)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="aipaas-bench-replicas-") as d:
        tmp = Path(d)
        print("rate limiter, per check:")
        costs = limiter_costs(tmp)
        print(f"aipaas serve, one-row /predict, everything on except profiling, {DURATION_S} s:")
        e2e = end_to_end(tmp)
    one, two = e2e["1 replica(s)"], e2e["2 replica(s)"]
    result = {
        "limiter_per_check": costs,
        "serving": e2e,
        "ratios": {
            "rps_2_vs_1": two["rps"] / one["rps"],
            "p99_2_vs_1": two["p99_ms"] / one["p99_ms"],
        },
        "cpus": os.cpu_count(),
        "audit": os.environ.get("BENCH_REPLICAS_AUDIT", "true"),
        "note": "wrk shares the machine's cores with the replicas",
    }
    print(f"  2 vs 1 replicas: {result['ratios']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = RESULTS if result["audit"] == "true" else RESULTS.with_name("replicas-no-audit.json")
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
