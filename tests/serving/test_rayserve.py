"""``aipaas serve --ray --replicas 2`` on a two-node Ray cluster, as an operator runs it.

The cluster is the one the training tests build (``ray.cluster_utils.Cluster``,
one CPU per node), in a process of its own (the session's local Ray cannot
share a process with it); ``aipaas serve --ray`` joins it from another
process, with a tiny LightGBM champion in a real MLflow store and the
platform database on SQLite. One deployment serves the module: the tests
run in file order and the last one stops it. Which replica answered is read
from ``X-Aipaas-Replica`` (its pid); a replica is a Ray worker process, the
child of its node's raylet, which says on which node it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import psutil
import pytest

from aipaas import audit
from aipaas.inference import keys
from aipaas.settings import Settings
from serving.rayserve import shared_store_problems
from tests.conftest import make_settings, settings_env
from tests.support.models import FEATURES, log_lgbm
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
REPLICA = "x-aipaas-replica"
ROW = dict.fromkeys(FEATURES, 1.0)
READY = "aipaas: serving on Ray Serve at"

CLUSTER = textwrap.dedent(
    """
    import json, sys
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    store = 200 * 1024**2
    head = {"num_cpus": 1, "object_store_memory": store, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    worker = cluster.add_node(num_cpus=1, object_store_memory=store)
    cluster.wait_for_nodes()

    def raylet(node):
        return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid

    nodes = {"head": raylet(cluster.head_node), "worker": raylet(worker)}
    print(json.dumps({"address": cluster.address, "raylets": nodes}), flush=True)
    sys.stdin.read()  # until the test closes it
    cluster.shutdown()
    """
)


class Lines:
    """A child's stdout, read by a thread so it never blocks on a full pipe."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.seen.append(line)
            self._q.put(line)

    def wait_for(self, start: str, proc: subprocess.Popen[str], timeout_s: float, log: Path) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.5)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            if line.startswith(start):
                return line
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise AssertionError(
            f"no line {start!r} in {timeout_s} s (exit {proc.poll()}); stdout {self.seen[-10:]};"
            f" stderr: {tail}"
        )


@dataclass
class Served:
    settings: Settings
    proc: subprocess.Popen[str]
    base: str
    key: str  # plenty of rate: 10000/s
    raylets: dict[str, int]  # node name -> its raylet's pid
    log: Path  # aipaas serve --ray's stderr

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _predict(base: str, key: str) -> httpx.Response:
    """One request on a fresh connection, so Ray's proxies may hand it to either replica."""
    return httpx.post(
        f"{base}/predict", json=ROW, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def _replicas_seen(base: str, key: str, want: int = 2, tries: int = 60) -> dict[str, str]:
    """Requests until ``want`` replicas have answered 200: replica pid -> model version."""
    seen: dict[str, str] = {}
    for _ in range(tries):
        r = _predict(base, key)
        assert r.status_code == 200, (r.status_code, r.text)
        seen[r.headers[REPLICA]] = r.json()["model_version"]
        if len(seen) == want:
            break
    return seen


def _stop(proc: subprocess.Popen[str], grace_s: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # only this test's session
            proc.wait(10)


# Ray gives a node 30 s to register with its GCS; a busy host sometimes
# misses it (aipaas.training.raycluster retries the same way).
SLOW_START = "timed out during startup"
CLUSTER_ATTEMPTS = 3


def _cluster(tmp: Path, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-c", CLUSTER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            cwd=tmp,
            start_new_session=True,
        )


def _end_cluster(cluster: subprocess.Popen[str]) -> None:
    """Closing its stdin shuts the cluster down; then its session is swept.

    A node that failed to start leaves agents behind in the session: only
    this cluster's processes are in it.
    """
    assert cluster.stdin is not None
    cluster.stdin.close()
    try:
        cluster.wait(60)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(cluster.pid, signal.SIGKILL)
    cluster.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("rayserve")
    home = tmp / "home"
    home.mkdir()
    token = tmp / "ray-auth-token"  # this cluster's own, not ~/.ray/auth_token
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIPAAS_", "RAY_ADDRESS"))}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    serve_log = tmp / "serve.log"
    cluster = _cluster(tmp, env, tmp / "cluster-1.log")
    proc: subprocess.Popen[str] | None = None
    try:
        s = make_settings(home)  # while the cluster starts
        log_lgbm(s)
        key = keys.create_key(s, "many", "predict", rate="10000/s")[1]
        for attempt in range(2, CLUSTER_ATTEMPTS + 2):
            log = tmp / f"cluster-{attempt - 1}.log"
            assert cluster.stdout is not None
            try:
                info = json.loads(Lines(cluster.stdout).wait_for("{", cluster, 150, log))
                break
            except AssertionError:
                slow = SLOW_START in log.read_text(errors="replace")
                if not slow or attempt > CLUSTER_ATTEMPTS:
                    raise
            _end_cluster(cluster)  # timed out starting on a busy host: start it again
            cluster = _cluster(tmp, env, tmp / f"cluster-{attempt}.log")
        port = free_port()
        serve_env = {
            **env,
            **settings_env(s),
            "AIPAAS_RAY__ADDRESS": info["address"],
            "AIPAAS_SERVING__RELOAD_POLL_S": "600",  # reloads come from promotion signals
        }
        cmd = [sys.executable, "-c", "from aipaas.cli import main; main()", "serve", "--ray",
               "--replicas", "2", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        with serve_log.open("w") as err:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=serve_env, cwd=ROOT,
                start_new_session=True,
            )  # fmt: skip
        assert proc.stdout is not None
        Lines(proc.stdout).wait_for(READY, proc, 180, serve_log)
        yield Served(s, proc, f"http://127.0.0.1:{port}", key, info["raylets"], serve_log)
    finally:
        if proc is not None:
            _stop(proc, 60)
        _end_cluster(cluster)


@pytest.mark.slow
@pytest.mark.e2e
def test_two_replicas_on_the_two_nodes_answer_predict(served: Served) -> None:
    seen = _replicas_seen(served.base, served.key)
    assert len(seen) == 2, f"only replicas {sorted(seen)} answered"
    assert set(seen.values()) == {"1"}
    # Each replica is a worker of a different node's raylet: Ray spread them.
    parents = {psutil.Process(int(pid)).ppid() for pid in seen}
    assert parents == set(served.raylets.values()), (parents, served.raylets)
    r = httpx.get(f"{served.base}/readyz", timeout=10)
    assert r.status_code == 200 and r.json()["models"] == {"diagnosis": "1"}


@pytest.mark.slow
@pytest.mark.e2e
def test_every_answer_is_in_the_one_audit_chain(served: Served) -> None:
    answered = [_predict(served.base, served.key) for _ in range(12)]
    assert {r.status_code for r in answered} == {200}
    assert len({r.headers[REPLICA] for r in answered}) == 2, "both replicas must have written"
    ids = {r.json()["request_id"] for r in answered}
    rows = audit.query(served.settings, limit=1000)
    audited = {row["request_id"]: row for row in rows if row["kind"] == "request"}
    assert ids <= audited.keys(), ids - audited.keys()
    assert {(audited[i]["status"], audited[i]["version"]) for i in ids} == {(200, "1")}
    report = audit.verify(served.settings)
    assert report.ok, report


@pytest.mark.slow
@pytest.mark.e2e
def test_a_new_champion_reaches_every_replica_with_no_failed_request(served: Served) -> None:
    answers: list[tuple[int, str]] = []  # (status, version) of the requests under load
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {served.key}"}) as c:
            while not stop.is_set():
                r = c.post(f"{served.base}/predict", json=ROW, timeout=10)
                ok = r.status_code == 200
                answers.append((r.status_code, r.json()["model_version"] if ok else ""))

    clients = [threading.Thread(target=load) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        version = log_lgbm(served.settings, seed=1)  # promoted: its signal goes to every replica
        deadline = time.monotonic() + 60
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = _replicas_seen(served.base, served.key)
            if len(seen) == 2 and set(seen.values()) == {version}:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        for t in clients:
            t.join()
    assert set(seen.values()) == {version} and len(seen) == 2, seen
    assert [a for a in answers if a[0] != 200] == []
    assert {v for _, v in answers} == {"1", version}, "the load ran across the swap"


def _hammer(base: str, key: str, seconds: float, connections: int) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        mine = []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as c:
            while time.monotonic() < stop:
                r = c.post("/predict", json=ROW, timeout=10)
                mine.append((r.status_code, r.headers.get(REPLICA, "")))
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.slow
@pytest.mark.e2e
def test_a_rate_limit_holds_in_total_across_the_replicas(served: Served) -> None:
    rate = 20
    key = keys.create_key(served.settings, "limited", "predict", rate=f"{rate}/s")[1]
    t0 = time.monotonic()
    results = _hammer(served.base, key, seconds=4.0, connections=6)
    elapsed = time.monotonic() - t0
    accepted = [pid for status, pid in results if status == 200]
    refused = sum(1 for status, _ in results if status == 429)
    assert len(accepted) + refused == len(results), {s for s, _ in results}
    assert refused > 0, "the clients never met the limit"
    assert len(set(accepted)) == 2, "both replicas must have accepted some"
    allowed = rate * elapsed + rate  # the rate over the run, plus one burst
    print(f"accepted {len(accepted)}, refused {refused}, allowed {allowed:.1f} in {elapsed:.2f} s")
    # Never more than the rate in total, whichever replica answers (one
    # host here: both replicas map the same bucket file).
    assert len(accepted) <= 1.05 * allowed, (len(accepted), allowed, elapsed)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_revoked_key_is_refused_by_every_replica_within_2_s(served: Served) -> None:
    record, key = keys.create_key(served.settings, "doomed", "predict", rate="10000/s")
    warm = set(_replicas_seen(served.base, key))  # cached on both
    assert len(warm) == 2
    keys.revoke_key(served.settings, record.id)
    revoked = time.monotonic()
    late_ok: list[float] = []
    refused_by: set[str] = set()
    while time.monotonic() - revoked < 3.0:
        r = _predict(served.base, key)
        at = time.monotonic() - revoked
        if r.status_code == 200 and at > 2.0:
            late_ok.append(at)
        elif r.status_code == 401:
            refused_by.add(r.headers[REPLICA])
    assert not late_ok, f"answered {len(late_ok)} times more than 2 s after revocation"
    assert refused_by == warm


@pytest.mark.slow
@pytest.mark.e2e
def test_sigterm_takes_the_deployment_down(served: Served) -> None:
    pids = set(_replicas_seen(served.base, served.key))
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(60) == 0, served.log_tail()
    for pid in pids:
        assert not psutil.pid_exists(int(pid)), f"replica {pid} outlived aipaas serve --ray"
    with pytest.raises(httpx.ConnectError):  # Serve's proxies are gone with it
        httpx.get(f"{served.base}/healthz", timeout=2)
    assert audit.verify(served.settings).ok  # every replica closed its writer cleanly


def test_a_cluster_across_hosts_needs_shared_stores(tmp_path: Path) -> None:
    local = make_settings(tmp_path)  # SQLite platform database, SQLite MLflow store
    assert shared_store_problems(local, {"10.0.0.1"}) == []  # one host: files are shared
    problems = shared_store_problems(local, {"10.0.0.1", "10.0.0.2"})
    assert len(problems) == 2
    assert "AIPAAS_AUDIT__DB_URL" in problems[0] and "AIPAAS_MLFLOW__TRACKING_URI" in problems[1]
    shared = Settings(
        _env_file=None,
        home=tmp_path,
        mlflow={"tracking_uri": "http://mlflow.internal:5000"},
        audit={"db_url": "postgresql+psycopg://aipaas@db.internal/aipaas"},
    )
    assert shared_store_problems(shared, {"10.0.0.1", "10.0.0.2"}) == []
