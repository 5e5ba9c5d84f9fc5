"""Ray Serve vs uvicorn: the same app and model, ``aipaas serve --ray`` against ``aipaas serve``.

One registered 100-tree LightGBM champion (from ``bench.bench_serving``),
keys, rate limits and audit on (profiling off), one-row ``/predict``
requests at 8 connections, loopback only, bounded:

- ``aipaas serve`` (uvicorn, one process), kept up the whole run;
- ``aipaas serve --ray --replicas 1``, then ``--replicas 2``: the same app
  as Ray Serve replicas (one CPU each) behind Serve's HTTP proxy, on a local
  Ray that the command starts (``ray.num_cpus`` 2).

Each Ray Serve configuration is measured in rounds interleaved with the
uvicorn server (uvicorn, Ray, uvicorn, Ray...), so a busy spell on this
shared machine lands on both; the best round of each cell is reported, with
its client latency and the latency the app itself recorded in the audit
trail (the difference is what sits in front of the app: Ray's proxy and
router, or nothing). On 2 cores the load generator, Ray's proxy and the
replicas share the same cores: the figures say what Ray Serve costs here,
not what it gains on a cluster.

Run: ``uv run python -m bench.bench_rayserve`` (or ``make bench``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import write_results
from bench.bench_serving import (
    DURATION_S,
    Target,
    _audit,
    _cell,
    _free_port,
    _load,
    _server_side_latency,
    _train_champion,
    _wait_http,
)

ROOT = Path(__file__).resolve().parent.parent
MODEL = "diagnosis"
CONNS = 8
ROUNDS = int(os.environ.get("BENCH_RAYSERVE_ROUNDS", "2"))
WARMUP_S = 2
READY = "aipaas: serving on Ray Serve at"
UVICORN = "uvicorn, 1 process"


def _env(tmp: Path, home: Path, uri: str) -> dict[str, str]:
    audit = _audit(tmp)
    token = tmp / "ray-auth-token"  # the bench's own Ray token, not ~/.ray/auth_token
    if not token.exists():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIPAAS_", "RAY_ADDRESS"))},
        "AIPAAS_HOME": str(home),
        "AIPAAS_MLFLOW__TRACKING_URI": uri,
        "AIPAAS_AUDIT__HMAC_KEY": audit["hmac_key"],
        "AIPAAS_AUDIT__DB_URL": audit["db_url"],
        "AIPAAS_SERVING__MODELS": json.dumps([MODEL]),
        "AIPAAS_SERVING__PROFILING_ENABLED": "false",
        "AIPAAS_RAY__NUM_CPUS": "2",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "OMP_NUM_THREADS": "1",
    }


def _serve(env: dict[str, str], port: int, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", "from aipaas.cli import main; main()", "serve",
           "--host", "127.0.0.1", "--port", str(port), *extra]  # fmt: skip
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def _wait_ready_line(proc: subprocess.Popen[str], timeout_s: float) -> None:
    """Until ``aipaas serve --ray`` says it serves; its stdout is drained afterwards."""
    assert proc.stdout is not None
    stdout = proc.stdout
    found = threading.Event()

    def read() -> None:
        for line in stdout:
            if line.startswith(READY):
                found.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not found.wait(0.5):
        if proc.poll() is not None:
            raise RuntimeError(f"aipaas serve --ray exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"aipaas serve --ray not ready in {timeout_s:.0f} s")


def _wait_replicas(target: Target, replicas: int, timeout_s: float) -> None:
    """Fresh connections until ``replicas`` distinct replicas have answered ``/predict``."""
    import urllib.request

    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < replicas:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {replicas} replicas answered")
        request = urllib.request.Request(
            target.url, data=target.body.encode(), headers=target.headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            seen.add(r.headers.get("x-aipaas-replica") or "single")


def _stop(proc: subprocess.Popen[str], grace_s: float = 60) -> None:
    """SIGTERM (``--ray`` takes its deployment and local Ray down), then the session's kill."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: Ray's processes too
            proc.wait(10)


def _key(tmp: Path, home: Path, label: str) -> tuple[Any, str, dict[str, str]]:
    from aipaas.inference import keys
    from aipaas.settings import Settings

    s = Settings(_env_file=None, home=home, audit=_audit(tmp))
    record, key = keys.create_key(s, f"bench-{label}", "predict", rate="1000000/s")
    return s, record.id, {"Authorization": f"Bearer {key}"}


def main() -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="aipaas-bench-rayserve-") as d:
        tmp = Path(d)
        uri, version, cols, row = _train_champion(tmp)
        body = json.dumps(dict(zip(cols, row, strict=True)))
        print(
            f"model {MODEL} v{version} (100-tree LightGBM), keys+limits+audit on, profiling off, "
            f"one-row /predict, {CONNS} connections, {DURATION_S} s per cell "
            f"(BENCH_SERVING_DURATION_S), {ROUNDS} rounds"
        )
        home = tmp / "home-uvicorn"
        home.mkdir()
        settings, key_id, headers = _key(tmp, home, "uvicorn")
        port = _free_port()
        uv = _serve(_env(tmp, home, uri), port)
        runs: dict[str, list[dict[str, Any]]] = {}
        who: dict[str, tuple[Any, str]] = {UVICORN: (settings, key_id)}
        try:
            _wait_http(f"http://127.0.0.1:{port}/readyz", 180, uv)  # type: ignore[arg-type]
            uv_target = Target(f"http://127.0.0.1:{port}/predict", body, headers)
            _load(uv_target, CONNS, WARMUP_S)
            for replicas in (1, 2):
                label = f"Ray Serve, {replicas} replica(s)"
                rhome = tmp / f"home-ray-{replicas}"
                rhome.mkdir()
                rsettings, rkey_id, rheaders = _key(tmp, rhome, f"ray-{replicas}")
                who[label] = (rsettings, rkey_id)
                rport = _free_port()
                t0 = time.monotonic()
                proc = _serve(_env(tmp, rhome, uri), rport, "--ray", "--replicas", str(replicas))
                try:
                    _wait_ready_line(proc, 300)
                    target = Target(f"http://127.0.0.1:{rport}/predict", body, rheaders)
                    _wait_replicas(target, replicas, 60)
                    print(f"  {label}: ready in {time.monotonic() - t0:.1f} s", flush=True)
                    _load(target, CONNS, WARMUP_S)
                    for _ in range(ROUNDS):
                        runs.setdefault(UVICORN, []).append(_cell(UVICORN, uv_target, CONNS))
                        runs.setdefault(label, []).append(_cell(label, target, CONNS))
                finally:
                    _stop(proc)
        finally:
            _stop(uv)  # type: ignore[arg-type]
        return _report(runs, who)


def _report(
    runs: dict[str, list[dict[str, Any]]], who: dict[str, tuple[Any, str]]
) -> dict[str, Any]:
    best = {label: max(rs, key=lambda r: r["rps"]) for label, rs in runs.items()}
    for label, r in best.items():
        settings, key_id = who[label]
        r.update(_server_side_latency(settings, key_id, runs[label]))
    uv = best[UVICORN]
    ratios = {
        f"{label} / uvicorn": {
            "rps": r["rps"] / uv["rps"],
            "p99": r["p99_ms"] / uv["p99_ms"],
        }
        for label, r in best.items()
        if label != UVICORN
    }
    print("\n  best round per server (client p50/p99; the app's own p50/p99 from the audit trail):")
    for label, r in best.items():
        print(
            f"  {label:26} {r['rps']:7.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
            f"p99 {r['p99_ms']:7.2f} ms  (app p50 {r.get('server_p50_ms', 0):.2f} ms, "
            f"p99 {r.get('server_p99_ms', 0):.2f} ms)  failed {r['failed']}"
        )
    for label, ratio in ratios.items():
        print(f"  {label}: throughput {ratio['rps']:.2f}x, p99 {ratio['p99']:.2f}x")
    result = {
        "connections": CONNS,
        "rounds": ROUNDS,
        "best": best,
        "runs": runs,
        "ratios": ratios,
        "note": "the load generator, Ray's proxy and the replicas share this machine's cores",
    }
    print(f"  results: {write_results('rayserve', result)}")
    return result


if __name__ == "__main__":
    main()
