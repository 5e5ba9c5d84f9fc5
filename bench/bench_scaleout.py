"""Every serving configuration side by side, in one run, on one registered model (issue #13).

The other serving benches each measure one comparison at their own time:
this one runs the configurations one after the other in a single process,
on the same registered 100-tree LightGBM champion (trained and promoted by
``bench.bench_serving._train_champion``), one-row ``/predict`` requests at 8
and 32 connections, ``BENCH_SCALEOUT_DURATION_S`` seconds per cell (default
10) after a 2 s warm-up per server, loopback only:

1. ``mlflow models serve`` (the baseline);
2. ``aipaas serve``, everything off (no keys, limits, audit, metrics, profiling);
3. everything on, 1 replica: keys, in-process limits, audit, metrics;
4. everything on, ``--replicas 2``: forked replicas sharing the host's bucket file;
5. everything on, 1 replica, the platform database on a real PostgreSQL 15
   (:mod:`aipaas.ops.pgserver`, durable) with the database rate limiter
   (``serving.rate_limit_store`` auto), then the same with
   ``rate_limit_store: host`` (in-process buckets with one replica): the
   difference is what the shared limiter costs per request;
6. ``aipaas serve --ray``: the same app as one Ray Serve replica on a local Ray.

Each cell reports throughput, client p50/p99, failed requests, and where the
2 cores went meanwhile: the load generator's CPU seconds (``getrusage`` of
this process and its reaped children: the Python threads, or ``wrk``), the
server's (every process under the server's pid, read from ``/proc``: the
replicas, Ray's raylet, proxy and replica workers) and the whole machine's
busy share (``/proc/stat``). A configuration that cannot start here says so
in its row, with the reason; the others still run. Every server, and the
PostgreSQL server, is stopped at the end, whatever happened.

Run: ``uv run python -m bench scaleout`` (or ``python -m bench.bench_scaleout``).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import bench_rayserve as rayserve
from bench import bench_replicas as replicas
from bench import bench_serving as serving
from bench import print_table, write_results

DURATION_S = int(os.environ.get("BENCH_SCALEOUT_DURATION_S", "10"))
CONNECTIONS = (8, 32)
WARMUP_S = 2
START_TIMEOUT_S = 180
RAY_START_TIMEOUT_S = 300
MODEL = serving.MODEL
CPUS = os.cpu_count() or 1
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Setup:
    """One serving configuration: which server, which features, which platform database."""

    label: str
    server: str = "aipaas"  # "aipaas" (uvicorn), "ray" (aipaas serve --ray) or "mlflow"
    on: bool = True  # keys, rate limits, audit, metrics
    replicas: int = 1
    postgresql: bool = False  # the platform database (keys, audit, buckets) on PostgreSQL
    rate_limit_store: str = "auto"


MLFLOW = Setup("mlflow models serve", server="mlflow", on=False)
OFF = Setup("aipaas everything off", on=False)
ON = Setup("aipaas on, 1 replica")
TWO = Setup("aipaas on, 2 replicas", replicas=2)
PG_DB = Setup("aipaas on, PostgreSQL, database limiter", postgresql=True)
PG_LOCAL = Setup(
    "aipaas on, PostgreSQL, in-process limiter", postgresql=True, rate_limit_store="host"
)
RAY = Setup("aipaas on, Ray Serve, 1 replica", server="ray")
SETUPS = (MLFLOW, OFF, ON, TWO, PG_DB, PG_LOCAL, RAY)


# --- where the CPU went ------------------------------------------------------------


def _own_cpu_s() -> float:
    """CPU seconds of this process (a Python generator's threads) and its reaped children (wrk)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _tree_cpu_s(root: int) -> dict[int, float]:
    """CPU seconds so far of ``root`` and every process under it, by pid, from ``/proc``."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited while we looked
            continue
        fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    tree, frontier = {root}, [root]
    while frontier:
        here = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == here and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return {p: cpu[p] for p in tree if p in cpu}


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _trees_cpu_s(roots: list[int]) -> dict[int, float]:
    return {pid: s for root in roots for pid, s in _tree_cpu_s(root).items()}


@contextmanager
def _cpu_meter(server_pids: list[int]) -> Iterator[dict[str, float]]:
    """Fills the dict on exit: generator, server and machine CPU over the block.

    What neither the generator nor the server took (``others_pct_of_machine``)
    went to whatever else runs on the machine: on a shared one, the share
    the scheduler left to the bench bounds its throughput.
    """
    out: dict[str, float] = {}
    own, tree, (busy, total), t0 = (
        _own_cpu_s(),
        _trees_cpu_s(server_pids),
        _machine_ticks(),
        time.monotonic(),
    )
    yield out
    wall = time.monotonic() - t0
    after = _trees_cpu_s(server_pids)
    busy2, total2 = _machine_ticks()
    out["generator_cpu_s"] = _own_cpu_s() - own
    # a process started during the block counts from zero; one that ended is lost
    out["server_cpu_s"] = sum(s - tree.get(pid, 0.0) for pid, s in after.items())
    out["machine_busy_pct"] = 100.0 * (busy2 - busy) / max(1, total2 - total)
    out["generator_pct_of_machine"] = 100.0 * out["generator_cpu_s"] / (wall * CPUS)
    out["server_pct_of_machine"] = 100.0 * out["server_cpu_s"] / (wall * CPUS)
    out["others_pct_of_machine"] = max(
        0.0,
        out["machine_busy_pct"] - out["generator_pct_of_machine"] - out["server_pct_of_machine"],
    )


# --- the servers --------------------------------------------------------------------


@dataclass
class Running:
    """One started server: the process to stop, where to send, and what to check after."""

    proc: subprocess.Popen[Any]
    target: serving.Target
    stop: Callable[[], None]
    key_id: str | None = None
    settings: Any = None
    # other processes serving it whose CPU counts as the server's: PostgreSQL's
    also_serving: list[int] = field(default_factory=list)


@dataclass
class Context:
    """What every configuration shares: the model, its bodies, the PostgreSQL server."""

    tmp: Path
    uri: str
    version: str
    ours: str  # the /predict body
    theirs: str  # the /invocations body
    pg: Any = None  # aipaas.ops.pgserver.PgServer, started by the first configuration on it
    pg_url: str = ""
    homes: list[Path] = field(default_factory=list)

    def home(self) -> Path:
        home = self.tmp / f"home-{len(self.homes)}"
        home.mkdir()
        self.homes.append(home)
        return home

    def postgresql(self) -> str:
        """The platform database on PostgreSQL, with the champion's promotion record on its chain.

        The version's signed record is the one the SQLite chain holds: the
        same record appended to the PostgreSQL chain (what moving the
        platform database there carries over), so serving on either loads it.
        """
        if self.pg is None:
            from aipaas.ops import pgserver
            from aipaas.training import promotion_log

            self.pg = pgserver.start(durable=True)  # as a team runs it: fsync on
            self.pg_url = self.pg.create_database("scaleout")
            record = promotion_log.latest_servable(_settings(self.tmp, self.tmp, ""), MODEL)
            if record is None:
                raise RuntimeError("the champion has no promotion record to carry over")
            promotion_log.append(_settings(self.tmp, self.tmp / "pg", self.pg_url), record)
        return self.pg_url

    def postmaster(self) -> int:
        """PostgreSQL's server pid (its backends are its children)."""
        return int((self.pg.data / "postmaster.pid").read_text().splitlines()[0])


def _settings(tmp: Path, home: Path, db_url: str) -> Any:
    """Settings on the bench's platform database (SQLite under ``tmp``) or on ``db_url``."""
    from aipaas.settings import Settings

    audit = serving._audit(tmp)
    return Settings(_env_file=None, home=home, audit={**audit, "db_url": db_url or audit["db_url"]})


def _env(ctx: Context, setup: Setup, home: Path) -> dict[str, str]:
    on = str(setup.on).lower()
    env = {
        **rayserve._env(ctx.tmp, home, ctx.uri),
        "AIPAAS_SERVING__AUTH_ENABLED": on,
        "AIPAAS_SERVING__RATE_LIMIT_ENABLED": on,
        "AIPAAS_SERVING__AUDIT_ENABLED": on,
        "AIPAAS_SERVING__METRICS_ENABLED": on,
        "AIPAAS_SERVING__RATE_LIMIT_STORE": setup.rate_limit_store,
    }
    if setup.postgresql:
        env["AIPAAS_AUDIT__DB_URL"] = ctx.postgresql()
    return env


def _drain(proc: subprocess.Popen[str]) -> None:
    """Read a server's stdout to the end, so a chatty server never blocks on a full pipe."""
    stdout = proc.stdout

    def read() -> None:
        for _ in stdout or ():
            pass

    threading.Thread(target=read, daemon=True).start()


def _start_mlflow(ctx: Context) -> Running:
    port = serving._free_port()
    log = ctx.tmp / "mlflow-serve.log"
    proc = serving._mlflow_server(ctx.uri, ctx.version, port, log)
    running = Running(
        proc,
        serving.Target(f"http://127.0.0.1:{port}/invocations", ctx.theirs, {}),
        lambda: serving._stop(proc),
    )
    try:
        serving._wait_http(f"http://127.0.0.1:{port}/ping", START_TIMEOUT_S, proc)
    except RuntimeError as err:
        running.stop()
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{err}; its log ends: {tail[0]}") from err
    return running


def _start_aipaas(ctx: Context, setup: Setup) -> Running:
    from aipaas.inference import keys

    home = ctx.home()
    env = _env(ctx, setup, home)
    headers: dict[str, str] = {}
    key_id, settings = None, None
    if setup.on:
        settings = _settings(ctx.tmp, home, env["AIPAAS_AUDIT__DB_URL"])
        # a rate far above what the bench sends: checked on every request, never refusing
        record, key = keys.create_key(settings, f"bench-{home.name}", "predict", rate="1000000/s")
        key_id, headers = record.id, {"Authorization": f"Bearer {key}"}
    port = serving._free_port()
    extra = ["--replicas", str(setup.replicas)]
    if setup.server == "ray":
        extra.append("--ray")
    proc = rayserve._serve(env, port, *extra)
    target = serving.Target(f"http://127.0.0.1:{port}/predict", ctx.ours, headers)
    running = Running(proc, target, lambda: rayserve._stop(proc), key_id, settings)
    if setup.postgresql:
        running.also_serving.append(ctx.postmaster())
    try:
        if setup.server == "ray":
            rayserve._wait_ready_line(proc, RAY_START_TIMEOUT_S)  # drains stdout from here on
            rayserve._wait_replicas(target, setup.replicas, 60)
        else:
            _drain(proc)
            serving._wait_http(f"http://127.0.0.1:{port}/readyz", START_TIMEOUT_S, proc)  # type: ignore[arg-type]
            replicas._wait_replicas(f"http://127.0.0.1:{port}/readyz", setup.replicas, 120)
    except BaseException:
        running.stop()
        raise
    return running


def _limiter_seen(running: Running) -> str:
    """Which store the server's limiter used, from the database: its key's row or none."""
    from aipaas import db

    if running.key_id is None or not running.settings.db_url.startswith("postgresql"):
        return "-"
    with db.engine(running.settings).connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT count(*) FROM rate_buckets WHERE key_id = %s", (running.key_id,)
        ).scalar()
    return "database" if row else "in-process"


# --- measuring ----------------------------------------------------------------------


def _cell(running: Running, conns: int) -> dict[str, Any]:
    start = datetime.now(UTC)
    with _cpu_meter([running.proc.pid, *running.also_serving]) as cpu:
        r = serving._load(running.target, conns, DURATION_S)
    r.update(cpu, conns=conns, loadavg_1m=os.getloadavg()[0])
    r["window"] = (start.isoformat(), datetime.now(UTC).isoformat())
    # what one request costs the server, whatever share of the cores it got
    r["requests_per_server_cpu_s"] = r["requests"] / r["server_cpu_s"] if r["server_cpu_s"] else 0
    if running.key_id is not None:
        # the app's own latency (request in to response ready, limiter included), from the
        # audit trail: what the server added, without the client's or the proxy's queueing
        app = serving._server_side_latency(running.settings, running.key_id, [r])
        r.update({k.replace("server_", "app_"): v for k, v in app.items()})
    print(
        f"  c={conns:<3} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
        f"p99 {r['p99_ms']:7.2f} ms  failed {r['failed']}  generator {r['generator_cpu_s']:.1f} "
        f"CPU s, server {r['server_cpu_s']:.1f}, machine {r['machine_busy_pct']:.0f}% busy",
        flush=True,
    )
    return r


def measure(ctx: Context, setup: Setup) -> dict[str, Any]:
    """Start ``setup``'s server, warm it, load it at each connection count, stop it.

    A configuration that cannot run here (no PostgreSQL binaries, Ray too
    heavy for the machine, a server that never answers) is reported with
    its reason instead of its figures: the brief of this bench is one table
    of every configuration, and one missing server must not cost the others.
    """
    print(f"\n{setup.label}:", flush=True)
    t0 = time.monotonic()
    try:
        running = _start_mlflow(ctx) if setup.server == "mlflow" else _start_aipaas(ctx, setup)
    except Exception as err:  # reported in its row: see the docstring
        reason = f"did not start: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        print(f"  {reason}", flush=True)
        return {"error": reason}
    try:
        started_s = time.monotonic() - t0
        print(f"  ready in {started_s:.1f} s", flush=True)
        serving._load(running.target, 8, WARMUP_S)
        cells: dict[str, Any] = {"started_s": started_s}
        for conns in CONNECTIONS:
            cells[str(conns)] = _cell(running, conns)
        cells["limiter_store_seen"] = _limiter_seen(running)
        return cells
    except Exception as err:  # reported in its row: see the docstring
        reason = f"failed under load: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        print(f"  {reason}", flush=True)
        return {"error": reason}
    finally:
        running.stop()


# --- the report ---------------------------------------------------------------------


def _ratio(results: dict[str, dict[str, Any]], a: Setup, b: Setup, conns: int) -> dict[str, float]:
    """``a`` against ``b`` at ``conns``.

    Throughput and p99 ratios; p50 and p99 added (ms), at the client and,
    where both servers audit, in the app; requests per server CPU second
    (what a request costs, whatever share of the cores each one got).
    """
    ra, rb = results[a.label].get(str(conns)), results[b.label].get(str(conns))
    if not ra or not rb or not rb["rps"] or not rb["p99_ms"]:
        return {}
    out = {
        "rps": ra["rps"] / rb["rps"],
        "p99": ra["p99_ms"] / rb["p99_ms"],
        "p50_added_ms": ra["p50_ms"] - rb["p50_ms"],
        "p99_added_ms": ra["p99_ms"] - rb["p99_ms"],
    }
    if rb["requests_per_server_cpu_s"]:
        out["per_cpu_s"] = ra["requests_per_server_cpu_s"] / rb["requests_per_server_cpu_s"]
    if "app_p50_ms" in ra and "app_p50_ms" in rb:
        out["app_p50_added_ms"] = ra["app_p50_ms"] - rb["app_p50_ms"]
        out["app_p99_added_ms"] = ra["app_p99_ms"] - rb["app_p99_ms"]
    return out


def _ratio_line(name: str, r: dict[str, float]) -> str:
    if not r:
        return f"  {name}: not measured (a configuration did not run)"
    line = (
        f"  {name}: {r['rps']:.2f}x req/s, p99 {r['p99']:.2f}x; "
        f"p50 {r['p50_added_ms']:+.2f} ms, p99 {r['p99_added_ms']:+.2f} ms"
    )
    if "app_p50_added_ms" in r:
        line += f" (app p50 {r['app_p50_added_ms']:+.2f} ms, p99 {r['app_p99_added_ms']:+.2f} ms)"
    if "per_cpu_s" in r:
        line += f"; requests per server CPU s {r['per_cpu_s']:.2f}x"
    return line


COMPARISONS = {
    "everything on vs mlflow models serve": (ON, MLFLOW),
    "everything on, shared limits (2 replicas) vs mlflow": (TWO, MLFLOW),
    "everything on vs everything off": (ON, OFF),
    "everything on, shared limits (2 replicas) vs everything off": (TWO, OFF),
    "2 replicas vs 1": (TWO, ON),
    "Ray Serve vs uvicorn (1 replica each)": (RAY, ON),
    "database limiter vs in-process (both on PostgreSQL)": (PG_DB, PG_LOCAL),
    "PostgreSQL platform database vs SQLite (1 replica)": (PG_LOCAL, ON),
}


def _report(ctx: Context, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for setup in SETUPS:
        r = results[setup.label]
        for conns in CONNECTIONS:
            c = r.get(str(conns))
            if c is None:
                rows.append([setup.label, conns, *["-"] * 11, r.get("error", "not measured")])
                continue
            note = f"limiter: {r['limiter_store_seen']}" if r["limiter_store_seen"] != "-" else ""
            rows.append(
                [
                    setup.label,
                    conns,
                    c["rps"],
                    c["p50_ms"],
                    c["p99_ms"],
                    c.get("app_p50_ms", "-"),
                    c.get("app_p99_ms", "-"),
                    c["failed"],
                    c["generator_cpu_s"],
                    f"{c['generator_pct_of_machine']:.0f}%",
                    f"{c['server_pct_of_machine']:.0f}%",
                    f"{c['others_pct_of_machine']:.0f}%",
                    c["requests_per_server_cpu_s"],
                    note,
                ]
            )
    tool = next((c["tool"] for r in results.values() for k, c in r.items() if k.isdigit()), "none")
    print_table(
        ["configuration", "conns", "req/s", "p50 ms", "p99 ms", "app p50", "app p99", "errors",
         "gen CPU s", "gen %", "server %", "others %", "req/server CPU s", "note"],
        rows,
        title=f"one-row /predict, {DURATION_S} s per cell, load from {tool} on the same "
        f"{CPUS} cores; % of the whole machine; app p50/p99: the server's own, from its audit",
    )  # fmt: skip
    ratios = {
        f"{name} @{conns}": _ratio(results, a, b, conns)
        for name, (a, b) in COMPARISONS.items()
        for conns in CONNECTIONS
    }
    print("\nratios, a vs b (client figures; the app's own where both audit):")
    for name, r in ratios.items():
        print(_ratio_line(name, r))
    at8 = ratios.get
    targets = {
        "on >= 10x mlflow @8": _met(at8("everything on vs mlflow models serve @8"), 10),
        "shared limits >= 10x mlflow @8": _met(
            at8("everything on, shared limits (2 replicas) vs mlflow @8"), 10
        ),
        "on >= 80% of off @8": _met(at8("everything on vs everything off @8"), 0.8),
        "shared limits >= 80% of off @8": _met(
            at8("everything on, shared limits (2 replicas) vs everything off @8"), 0.8
        ),
    }
    print("targets: " + ", ".join(f"{k}: {v}" for k, v in targets.items()))
    result = {
        "model": MODEL,
        "version": ctx.version,
        "duration_s": DURATION_S,
        "warmup_s": WARMUP_S,
        "connections": list(CONNECTIONS),
        "load_generator": tool,
        "configurations": results,
        "ratios": ratios,
        "targets": targets,
        "note": "the load generator shares the machine's cores with the servers: its CPU "
        "seconds are in each cell (generator_cpu_s)",
    }
    print(f"results: {write_results('scaleout', result)}")
    return result


def _met(ratio: dict[str, float] | None, target: float) -> str:
    if not ratio:
        return "not measured"
    return f"{'met' if ratio['rps'] >= target else 'MISSED'} ({ratio['rps']:.2f}x)"


def main() -> dict[str, Any]:
    for name, value in (
        ("OMP_NUM_THREADS", "1"),
        ("MLFLOW_DISABLE_TELEMETRY", "true"),
        ("DO_NOT_TRACK", "true"),
        ("RAY_USAGE_STATS_ENABLED", "0"),
    ):
        os.environ.setdefault(name, value)
    tmp = Path(tempfile.mkdtemp(prefix="aipaas-bench-scaleout-"))
    ctx: Context | None = None
    try:
        uri, version, cols, row = serving._train_champion(tmp)
        ours = json.dumps(dict(zip(cols, row, strict=True)))
        theirs = json.dumps({"dataframe_split": {"columns": cols, "data": [row]}})
        ctx = Context(tmp, uri, version, ours, theirs)
        print(
            f"model {MODEL} v{version} (100-tree LightGBM), one-row requests, "
            f"{DURATION_S} s per cell (BENCH_SCALEOUT_DURATION_S) at {CONNECTIONS} connections"
        )
        results = {setup.label: measure(ctx, setup) for setup in SETUPS}
        return _report(ctx, results)
    finally:
        if ctx is not None and ctx.pg is not None:
            from aipaas import db

            if ctx.pg_url:
                db.dispose(_settings(tmp, tmp, ctx.pg_url))
            ctx.pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
