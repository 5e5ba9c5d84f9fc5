"""A real uvicorn on loopback, a real MLflow registry, champion swapped under load."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from aipaas import audit
from tests.support.models import FEATURES, log_lgbm, make_champion
from tests.support.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]


def _env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIPAAS_")}
    env.update(
        AIPAAS_HOME=str(settings.home),
        AIPAAS_MLFLOW__TRACKING_URI=settings.mlflow_tracking_uri,
        AIPAAS_SERVING__RELOAD_POLL_S="600",  # only the promotion signal can swap in time
        OMP_NUM_THREADS="1",
    )
    return env


def _cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from aipaas.cli import main; main()", *args]
    return subprocess.run(
        cmd, cwd=ROOT, env=_env(settings), capture_output=True, text=True, timeout=120
    )


def test_champion_swap_under_concurrent_load(settings):
    v1 = log_lgbm(settings, seed=0)
    v2 = log_lgbm(settings, champion=False, seed=1)
    created = _cli(settings, "keys", "create", "--name", "e2e", "--scopes", "predict,feedback",
                   "--rate", "10000/s")  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("aip_")

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=_env(settings),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, "server exited"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.3)

        results: list[tuple[int, str, str]] = []
        failures: list[str] = []
        stop = threading.Event()
        lock = threading.Lock()
        row = dict.fromkeys(FEATURES, 1.0)

        def client() -> None:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
                while not stop.is_set():
                    try:
                        r = c.post("/predict", json=row, timeout=10)
                    except httpx.HTTPError as err:
                        with lock:
                            failures.append(repr(err))
                        continue
                    with lock:
                        if r.status_code != 200:
                            failures.append(f"{r.status_code} {r.text}")
                        else:
                            body = r.json()
                            results.append(
                                (r.status_code, body["request_id"], body["model_version"])
                            )

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        make_champion(settings, "diagnosis", v2)  # a promotion: signed, on record, nudged
        deadline = time.monotonic() + 30
        while not any(v == v2 for _, _, v in list(results)):
            assert time.monotonic() < deadline, "never swapped to v2"
            time.sleep(0.1)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(20)
    finally:
        server.terminate()
        server.wait(20)

    assert failures == []
    versions = [v for _, _, v in results]
    assert versions[0] == v1 and versions[-1] == v2
    # once v2 answered, v1 never answers again (requests in flight at the swap aside)
    first_v2 = versions.index(v2)
    assert versions[first_v2 + 10 :].count(v1) == 0
    answered = {r["request_id"]: r["version"] for r in audit.query(settings, limit=100_000)}
    assert all(answered[rid] == v for _, rid, v in results)
    events = [r["event"] for r in audit.tail(settings, 100_000) if r["kind"] == "admin"]
    assert events == [
        "model.promoted",
        "key.created",
        "model.loaded",
        "model.promoted",
        "model.swapped",
    ]

    verified = _cli(settings, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert f"{len(results) + len(events)} records" in verified.stdout
    usage = _cli(settings, "usage", "--json")
    assert usage.returncode == 0 and '"requests"' in usage.stdout
