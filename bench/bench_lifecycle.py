"""The lifecycle through ``aipaas up``: every store on SQLite against every store on PostgreSQL.

The same thing twice, one after the other in one run, on a private data
project each (a fresh clone: nothing reproduced yet) and a home each:

- SQLite, the one-laptop default (the platform database, MLflow's backend
  and Prefect's database are files under the home);
- PostgreSQL 15 on loopback, started here from Debian's binaries with its
  durable defaults, one database per store (``audit.db_url``,
  ``mlflow.backend_store_uri``, ``prefect.database_url``).

``aipaas up`` starts, finds no champion for ``diagnosis`` and runs the
lifecycle (data -> train with a small search -> promote) on its work pool.
Measured: the time until ``up`` says it is up, the time from there until
serving answers with champion v1, and what the platform itself records:
the Prefect flow runs' durations (``lifecycle`` and its ``data``, ``train``,
``promote`` subflows, read from the Prefect API) and the training steps'
``time_<step>_s`` metrics (read from the MLflow API). The search is the
e2e test's (2 samples, 2 folds), so the figures are dominated by the
platform's own overheads, which is what the backends change.

Each backend runs ``--rounds`` times (default 2), the order alternating
between rounds (the first ``up`` on a machine pays cold caches); the table
shows each figure's mean, the JSON every run. Run ``uv run python -m
bench.bench_lifecycle`` (or ``make bench``); writes
``bench/results/lifecycle.json``. Takes about 3 minutes per run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import print_table, write_results
from tests.support.platform import get_json

MODEL = "diagnosis"
UP_TIMEOUT_S = 300.0
LIFECYCLE_TIMEOUT_S = 1200.0
FLOWS = ("lifecycle", "data", "train", "promote")
SQLITE = "sqlite (default)"
POSTGRES = "postgresql 15 (all three stores)"


def _flow_runs(prefect: str) -> dict[str, float]:
    """Seconds each completed flow run took (first run of each flow), from the Prefect API."""
    flows = {f["id"]: f["name"] for f in get_json(f"{prefect}/flows/filter", {})}
    runs = get_json(f"{prefect}/flow_runs/filter", {"sort": "START_TIME_ASC"})
    seconds: dict[str, float] = {}
    for run in runs:
        name = flows.get(run["flow_id"], "?")
        if run["state_type"] == "COMPLETED" and name in FLOWS and name not in seconds:
            seconds[name] = float(run["total_run_time"])
    return seconds


def _training_steps(mlflow: str) -> dict[str, float]:
    """The ``time_<step>_s`` metrics of the registered model's training run, from the MLflow API."""
    version = get_json(f"{mlflow}/api/2.0/mlflow/model-versions/get?name={MODEL}&version=1")
    run = get_json(f"{mlflow}/api/2.0/mlflow/runs/get?run_id={version['model_version']['run_id']}")
    metrics = run["run"]["data"].get("metrics", [])
    return {
        m["key"].removeprefix("time_").removesuffix("_s"): float(m["value"])
        for m in metrics
        if m["key"].startswith("time_")
    }


def measure(label: str, root: Path, stores: dict[str, str]) -> dict[str, Any]:
    """One ``aipaas up`` with its first lifecycle, timed; everything stopped afterwards."""
    from tests.support.platform import running_up, stop

    extra = {"AIPAAS_SERVING__MODELS": f'["{MODEL}"]', **stores}
    with running_up(root, extra, timeout_s=UP_TIMEOUT_S) as up:
        up.wait_served({MODEL: "1"}, timeout_s=LIFECYCLE_TIMEOUT_S)
        t_served = time.monotonic() - up.started
        flows = _flow_runs(up.url("prefect", "/api"))
        steps = _training_steps(up.url("mlflow"))
        stop(up)
    load = os.getloadavg()[0]
    sqlite_files = sorted(str(p.name) for p in (root / "home").rglob("*.db"))
    figures = {
        "backend": label,
        "up_s": up.up_s,
        "up_to_champion_served_s": t_served - up.up_s,
        "flow_run_s": flows,
        "training_step_s": steps,
        "sqlite_files_under_home": sqlite_files,
        "load_avg_1m_after": round(load, 2),
    }
    print(f"{label}: {json.dumps(figures)}", flush=True)
    return figures


def main() -> None:
    from aipaas.ops import pgserver

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="each backend this many times")
    args = parser.parse_args()
    server = pgserver.start(durable=True)
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="aipaas-bench-lifecycle-") as tmp:
            for i in range(args.rounds):
                # Alternate the order: whichever goes first pays the cold caches.
                order = (SQLITE, POSTGRES) if i % 2 == 0 else (POSTGRES, SQLITE)
                for label in order:
                    stores = {} if label == SQLITE else _pg_stores(server, i)
                    root = Path(tmp) / f"{label.split()[0]}-{i}"
                    runs.append({"round": i, **measure(label, root, stores)})
    finally:
        server.stop()

    def mean(label: str, pick: Any) -> float | str:
        values = [pick(r) for r in runs if r["backend"] == label]
        values = [v for v in values if isinstance(v, float)]
        return sum(values) / len(values) if values else "-"

    figures = [
        ("aipaas up: until up", lambda r: r["up_s"]),
        ("up -> champion v1 served", lambda r: r["up_to_champion_served_s"]),
        *((f"flow run: {f}", lambda r, f=f: r["flow_run_s"].get(f, "-")) for f in FLOWS),
        *(
            (f"train step: {s}", lambda r, s=s: r["training_step_s"].get(s, "-"))
            for s in sorted({k for r in runs for k in r["training_step_s"]})
        ),
    ]
    rows = []
    summary = {}
    for name, pick in figures:
        sq, pg = mean(SQLITE, pick), mean(POSTGRES, pick)
        ratio = pg / sq if isinstance(sq, float) and isinstance(pg, float) and sq else "-"
        rows.append([name, sq, pg, ratio])
        summary[name] = {"sqlite_s": sq, "postgresql_s": pg, "postgresql_over_sqlite": ratio}
    print_table(
        ["seconds (mean of rounds)", SQLITE, POSTGRES, "pg / sqlite"],
        rows,
        title=f"lifecycle of {MODEL} through aipaas up (2 samples, 2 folds), {args.rounds} rounds",
    )
    path = write_results(
        "lifecycle",
        {
            "model": MODEL,
            "num_samples": 2,
            "cv_folds": 2,
            "rounds": args.rounds,
            "mean": summary,
            "runs": runs,
        },
    )
    print(f"\nwrote {path}")


def _pg_stores(server: Any, round_: int) -> dict[str, str]:
    """Fresh databases for one round, one per store, with the driver each server needs."""
    urls = {
        s: server.create_database(f"bench_{s}_{round_}") for s in ("platform", "mlflow", "prefect")
    }
    return {
        "AIPAAS_AUDIT__DB_URL": urls["platform"],
        "AIPAAS_MLFLOW__BACKEND_STORE_URI": urls["mlflow"],
        "AIPAAS_PREFECT__DATABASE_URL": urls["prefect"].replace(
            "postgresql+psycopg://", "postgresql+asyncpg://"
        ),
    }


if __name__ == "__main__":
    main()
