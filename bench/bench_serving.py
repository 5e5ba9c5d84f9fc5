"""Serving speed: aipaas /predict (keys+limits+audit; that plus quota, budget and end user;
that plus profiling; everything off) vs ``mlflow models serve``.

One registered LightGBM model (the configured registry's ``diagnosis``
champion when its server answers, else a 100-tree classifier trained here on
scikit-learn's breast cancer data in a temporary home), one-row requests,
1 and 8 connections, ``wrk`` (falls back to a Python load generator), a
bounded duration per cell. Keys, audit and usage always go to a temporary
platform database, never the user's. The profiled configuration is the
everything-on server handing each answered row to the spool, with a real
``aipaas profiler`` process reading it (triggers off: no Prefect here).
The governed configuration adds what governance costs per request: a key
with a daily quota and a monthly budget (checked on every request), an
``X-End-User`` pseudonymised into every audit record, Prometheus metrics
(off only in the everything-off server). A promotion record's signature
costs nothing per request: serving checks it once, when it loads a version.

Run: ``uv run python -m bench.bench_serving`` (or ``make bench``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
MODEL = "diagnosis"
DURATION_S = int(os.environ.get("BENCH_SERVING_DURATION_S", "10"))
WARMUP_S = 2
CONNECTIONS = (1, 8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


HMAC_KEY = secrets.token_hex(16)


def _audit(tmp: Path) -> dict[str, str]:
    """One platform database and audit key for the bench: its servers' keys, trail, champion."""
    return {"hmac_key": HMAC_KEY, "db_url": f"sqlite:///{tmp / 'platform.db'}"}


def _train_champion(tmp: Path) -> tuple[str, str, list[str], list[float]]:
    """A 100-tree LightGBM classifier on breast cancer, registered and promoted under ``tmp``.

    The promotion is recorded (signed, on the audit chain) in the platform
    database every bench server shares, so they all load it.
    """
    import lightgbm as lgb
    import mlflow
    import mlflow.lightgbm
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.datasets import load_breast_cancer

    from aipaas.settings import Settings
    from aipaas.training import promote, registry
    from aipaas.training.promotion_log import PromotionRecord

    home = tmp / "registry"
    uri = f"sqlite:///{home / 'mlflow.db'}"
    s = Settings(_env_file=None, home=home, mlflow={"tracking_uri": uri}, audit=_audit(tmp))
    registry.connect(s)
    registry.ensure_experiment(s)
    data = load_breast_cancer()
    cols = [c.replace(" ", "_") for c in data.feature_names]
    x = pd.DataFrame(data.data, columns=cols)
    y = pd.Series(data.target).map({0: "malignant", 1: "benign"}).to_numpy()
    model = lgb.LGBMClassifier(n_estimators=100, verbose=-1, n_jobs=1).fit(x, y)
    with mlflow.start_run():
        info = mlflow.lightgbm.log_model(
            model, name="model", signature=infer_signature(x, y), registered_model_name=MODEL
        )
    version = str(info.registered_model_version)
    # What `aipaas promote` records (signed, on the audit chain): serving
    # loads only a champion with that record.
    record = PromotionRecord(MODEL, version, "promote", "promoted", decided_by="bench")
    promote.record_decision(s, record)
    return uri, version, cols, [float(v) for v in data.data[0]]


# --- load generation ---------------------------------------------------------

LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
"""


def _wrk(url: str, body: str, headers: dict[str, str], conns: int, duration: int) -> dict[str, Any]:
    lines = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA.format(body=json.dumps(body), headers=lines))
        script = f.name
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "-s", script, url],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=True,
        ).stdout
    finally:
        os.unlink(script)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": _ms(re.search(r"\s50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"\s99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "requests": total,
        "mean_ms": _ms(re.search(r"Latency\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "failed": (int(non2xx.group(1)) if non2xx else 0)
        + (sum(int(g) for g in errors.groups()) if errors else 0),
        "tool": "wrk",
    }


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _python_load(
    url: str, body: str, extra: dict[str, str], conns: int, duration: int
) -> dict[str, Any]:
    """Keep-alive HTTP/1.1 clients in threads: slower than wrk, same shape of result."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    headers = {"Content-Type": "application/json", **extra}
    lat: list[float] = []
    failed = [0]
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker() -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        mine = []
        bad = 0
        while time.monotonic() < stop:
            t = time.perf_counter()
            conn.request("POST", u.path, body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            mine.append(time.perf_counter() - t)
            bad += r.status >= 300
        with lock:
            lat.extend(mine)
            failed[0] += bad

    threads = [threading.Thread(target=worker) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()
    return {
        "rps": len(lat) / duration,
        "mean_ms": sum(lat) / max(1, len(lat)) * 1000,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "requests": len(lat),
        "failed": failed[0],
        "tool": "python",
    }


def _load(target: Target, conns: int, duration: int) -> dict[str, Any]:
    if shutil.which("wrk"):
        return _wrk(target.url, target.body, target.headers, conns, duration)
    return _python_load(target.url, target.body, target.headers, conns, duration)


# --- servers -------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One server under load: where to send, what, with which headers."""

    url: str
    body: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Config:
    """One aipaas configuration: which features are on, and what its key carries."""

    label: str
    on: bool  # keys, rate limits, audit
    profiling: bool = False
    governance: bool = False  # a quota and a budget on the key, an X-End-User per request
    metrics: bool = True


ON = Config("aipaas keys+limits+audit ON", on=True)
GOVERNED = Config("aipaas ON + quota + end user", on=True, governance=True)
PROFILED = Config("aipaas ON + profiling", on=True, profiling=True)
OFF = Config("aipaas everything OFF", on=False, metrics=False)
CONFIGS = (ON, GOVERNED, PROFILED, OFF)
MLFLOW = "mlflow models serve"
ROUNDS = int(os.environ.get("BENCH_SERVING_ROUNDS", "3"))


def _aipaas_server(
    home: Path, tracking_uri: str, port: int, cfg: Config, audit: dict[str, str]
) -> subprocess.Popen[bytes]:
    on = str(cfg.on).lower()
    env = {
        **os.environ,
        "AIPAAS_HOME": str(home),
        "AIPAAS_MLFLOW__TRACKING_URI": tracking_uri,
        "AIPAAS_AUDIT__HMAC_KEY": audit["hmac_key"],
        "AIPAAS_AUDIT__DB_URL": audit["db_url"],
        "AIPAAS_SERVING__MODELS": json.dumps([MODEL]),
        "AIPAAS_SERVING__DEFAULT_MODEL": MODEL,
        "AIPAAS_SERVING__AUTH_ENABLED": on,
        "AIPAAS_SERVING__RATE_LIMIT_ENABLED": on,
        "AIPAAS_SERVING__AUDIT_ENABLED": on,
        "AIPAAS_SERVING__METRICS_ENABLED": str(cfg.metrics).lower(),
        "AIPAAS_SERVING__PROFILING_ENABLED": str(cfg.profiling).lower(),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def _profiler(home: Path) -> subprocess.Popen[bytes]:
    """The profiler process `aipaas up` runs, on the profiled server's home."""
    # every window_rows rows, however fast: the bench counts rows in closed windows
    env = {**os.environ, "AIPAAS_HOME": str(home), "AIPAAS_MONITORING__WINDOW_MIN_SECONDS": "0"}
    cmd = [sys.executable, "-c", "from aipaas.cli import main; main()", "profiler", "--no-trigger"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def _mlflow_server(
    tracking_uri: str, version: str, port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"}
    # mlflow runs `uvicorn` by name: the venv's bin must be on PATH (it is under `uv run`).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}/{version}",
        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


@dataclass
class Bench:
    """The servers under test, started together, and what the report needs of them."""

    tmp: Path
    targets: dict[str, Target] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # label -> its Settings
    key_ids: dict[str, str] = field(default_factory=dict)  # label -> its key's id
    profiled_home: Path | None = None

    def start_aipaas(self, cfg: Config, tracking_uri: str, body: str) -> None:
        from aipaas.inference import keys
        from aipaas.settings import Settings

        home = self.tmp / f"home-{len(self.settings)}"  # its own spool and profiles
        home.mkdir()
        s = Settings(_env_file=None, home=home, audit=_audit(self.tmp))
        headers: dict[str, str] = {}
        if cfg.on:
            # Quota and budget far above what the bench sends: checked on
            # every request, never refusing one.
            limits = {"quota": "100000000/day", "budget": "1000000/month"} if cfg.governance else {}
            record, key = keys.create_key(s, "bench", "predict", rate="1000000/s", **limits)
            self.key_ids[cfg.label] = record.id
            headers["Authorization"] = f"Bearer {key}"
        if cfg.governance:
            headers["X-End-User"] = "patient-0042"
        port = _free_port()
        self.procs.append(_aipaas_server(home, tracking_uri, port, cfg, _audit(self.tmp)))
        _wait_http(f"http://127.0.0.1:{port}/readyz", 180, self.procs[-1])
        if cfg.profiling:
            self.procs.append(_profiler(home))
            self.profiled_home = home
        self.settings[cfg.label] = s
        self.targets[cfg.label] = Target(f"http://127.0.0.1:{port}/predict", body, headers)

    def start_mlflow(self, tracking_uri: str, version: str, body: str) -> None:
        port = _free_port()
        log = self.tmp / "mlflow-serve.log"
        self.procs.append(_mlflow_server(tracking_uri, version, port, log))
        try:
            _wait_http(f"http://127.0.0.1:{port}/ping", 180, self.procs[-1])
        except RuntimeError:
            print(log.read_text(errors="replace")[-3000:])
            raise
        self.targets[MLFLOW] = Target(f"http://127.0.0.1:{port}/invocations", body, {})

    def stop(self) -> None:
        for p in self.procs:
            _stop(p)


def _cell(label: str, target: Target, conns: int) -> dict[str, Any]:
    start = datetime.now(UTC)
    r = _load(target, conns, DURATION_S)
    r["window"] = (start.isoformat(), datetime.now(UTC).isoformat())
    r["loadavg_1m"] = os.getloadavg()[0]
    # Little's law: connections kept busy = throughput x mean latency. Far
    # above `conns`, the client itself was off-CPU (a busy machine) and its
    # latency figures are inflated.
    r["busy_connections"] = r["rps"] * r["mean_ms"] / 1000
    r["conns"] = conns
    print(
        f"  {label:30} c={conns}  {r['rps']:8.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
        f"p99 {r['p99_ms']:7.2f} ms  failed {r['failed']}  "
        f"(Little: {r['busy_connections']:.1f} busy, load {r['loadavg_1m']:.1f})",
        flush=True,
    )
    return r


def _profiled_rows(home: Path) -> int:
    """Rows the profiler closed into windows, once it has caught up with the spool."""

    def closed() -> int:
        return sum(
            int(json.loads(p.read_text()).get("rows", 0))
            for p in (home / "profiles").glob("**/window-*.json")
        )

    rows, deadline = -1, time.monotonic() + 60
    while time.monotonic() < deadline and rows != closed():
        rows = closed()
        time.sleep(3)
    return max(rows, 0)


def _server_side_latency(
    settings: Any, key_id: str, runs: list[dict[str, Any]]
) -> dict[str, float]:
    """p50/p99 of the latency one server recorded in the audit trail during ``runs``.

    The servers share one platform database; each has its own key.
    """
    from aipaas import audit

    lat: list[float] = []
    for run in runs:
        since, until = (datetime.fromisoformat(t) for t in run["window"])
        rows = audit.query(settings, key_id=key_id, since=since, until=until, limit=10**7)
        lat += [r["latency_ms"] for r in rows if r["kind"] == "request"]
    lat.sort()
    if not lat:
        return {}
    return {"server_p50_ms": lat[len(lat) // 2], "server_p99_ms": lat[int(len(lat) * 0.99)]}


def _run_rounds(targets: dict[str, Target]) -> dict[str, list[dict[str, Any]]]:
    """Every cell ``ROUNDS`` times, interleaved, so a busy spell does not land on one only."""
    for target in targets.values():
        _load(target, 8, WARMUP_S)
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(ROUNDS):
        for conns in CONNECTIONS:
            for label, target in targets.items():
                runs.setdefault(f"{label}@{conns}", []).append(_cell(label, target, conns))
    return runs


def _best(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Best round per cell: among rounds whose load generator kept its connections busy
    (Little's law; a starved client inflates p99 for any server), the fastest; a cell
    with no such round keeps its fastest."""
    return {
        cell: max(rs, key=lambda r: (r["busy_connections"] <= r["conns"] * 1.25, r["rps"]))
        for cell, rs in runs.items()
    }


def _ratios(results: dict[str, dict[str, Any]]) -> tuple[dict[str, float], dict[str, bool]]:
    at8 = {label: results[f"{label}@8"] for label in (ON.label, GOVERNED.label, OFF.label)}
    on8, gov8, off8 = at8[ON.label], at8[GOVERNED.label], at8[OFF.label]
    ml8, prof8 = results[f"{MLFLOW}@8"], results[f"{PROFILED.label}@8"]
    ratios = {
        "on_vs_mlflow_at_8": on8["rps"] / ml8["rps"],
        "on_vs_off_at_8": on8["rps"] / off8["rps"],
        "governed_vs_off_at_8": gov8["rps"] / off8["rps"],
        "governed_vs_on_at_8": gov8["rps"] / on8["rps"],
        "on_vs_mlflow_at_1": results[f"{ON.label}@1"]["rps"] / results[f"{MLFLOW}@1"]["rps"],
        "profiled_vs_on_p99_at_8": prof8["p99_ms"] / on8["p99_ms"],
        "profiled_vs_on_server_p99_at_8": prof8["server_p99_ms"] / on8["server_p99_ms"],
        "profiled_vs_on_rps_at_8": prof8["rps"] / on8["rps"],
    }
    targets = {
        "10x_mlflow_at_8": ratios["on_vs_mlflow_at_8"] >= 10,
        "p99_under_10ms_on_at_8": on8["p99_ms"] < 10,
        "everything_on_within_80pct_of_off": ratios["governed_vs_off_at_8"] >= 0.8,
        "profiling_server_p99_within_10pct": ratios["profiled_vs_on_server_p99_at_8"] <= 1.1,
    }
    return ratios, targets


def _print_summary(results: dict[str, dict[str, Any]], ratios: dict[str, float]) -> None:
    print("\n  best round per cell (client not starved, then fastest):")
    for cell, r in results.items():
        if "rps" in r:
            print(
                f"  {cell:34} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                f"p99 {r['p99_ms']:7.2f} ms"
            )
    print(f"\n  ON / mlflow at 8 connections:          {ratios['on_vs_mlflow_at_8']:.1f}x")
    print(f"  ON / OFF at 8 connections:             {ratios['on_vs_off_at_8']:.0%}")
    print(f"  ON+quota+end user / OFF at 8:          {ratios['governed_vs_off_at_8']:.0%}")
    print(f"  ON+quota+end user / ON at 8:           {ratios['governed_vs_on_at_8']:.0%}")
    print(f"  ON / mlflow at 1 connection:           {ratios['on_vs_mlflow_at_1']:.1f}x")
    print(
        f"  p99 with profiling / without at 8: client {ratios['profiled_vs_on_p99_at_8']:.2f}, "
        f"server {ratios['profiled_vs_on_server_p99_at_8']:.2f}"
    )


def main() -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    bench = Bench(Path(tempfile.mkdtemp(prefix="aipaas-bench-serving-")))
    try:
        tracking_uri, version, names, row = _train_champion(bench.tmp)
        source = "trained by the bench (100-tree LightGBM, breast cancer)"
        print(
            f"model {MODEL} v{version} ({source}); {DURATION_S} s per cell, {ROUNDS} rounds "
            "interleaved (best round reported), one-row requests"
        )
        ours = json.dumps(dict(zip(names, row, strict=True)))
        for cfg in CONFIGS:
            bench.start_aipaas(cfg, tracking_uri, ours)
        mlflow_body = {"dataframe_split": {"columns": names, "data": [row]}}
        bench.start_mlflow(tracking_uri, version, json.dumps(mlflow_body))
        runs = _run_rounds(bench.targets)
        results = _best(runs)
        for conns in CONNECTIONS:
            for cfg in (ON, GOVERNED, PROFILED):
                cell = f"{cfg.label}@{conns}"
                results[cell].update(
                    _server_side_latency(
                        bench.settings[cfg.label], bench.key_ids[cfg.label], runs[cell]
                    )
                )
        bench.stop()
        return _report(bench, version, source, runs, results)
    finally:
        bench.stop()
        shutil.rmtree(bench.tmp, ignore_errors=True)


def _report(
    bench: Bench,
    version: str,
    source: str,
    runs: dict[str, list[dict[str, Any]]],
    results: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    from aipaas import audit

    report = audit.verify(bench.settings[GOVERNED.label])
    results["audit_governed"] = {"records": report.records, "verified": report.ok}
    print(f"\n  audit trail of the governed server: {report.records} records, ok={report.ok}")
    assert bench.profiled_home is not None
    profiled_rows = _profiled_rows(bench.profiled_home)
    results["profiling"] = {"rows_in_closed_windows": profiled_rows}
    print(f"  profiler: {profiled_rows} served rows profiled into closed windows")
    ratios, targets = _ratios(results)
    _print_summary(results, ratios)
    print("  targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    out = {
        "model": MODEL,
        "version": version,
        "source": source,
        "duration_s": DURATION_S,
        "cpus": os.cpu_count(),
        "rounds": ROUNDS,
        "cells": results,
        "all_rounds": runs,
        "ratios": ratios,
        "targets": targets,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"  wrote {RESULTS.relative_to(ROOT)}")
    return out


if __name__ == "__main__":
    main()
