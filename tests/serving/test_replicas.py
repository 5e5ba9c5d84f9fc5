"""``aipaas serve --replicas 2`` as users run it: one port, two processes, one set of limits.

One real server (a subprocess on a loopback port, a tiny LightGBM champion
in a real MLflow store, the platform database on SQLite) serves the whole
module; the tests run in file order and the last one stops it. Which
replica answered is read from the ``X-Aipaas-Replica`` header (its pid).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aipaas.inference import keys
from aipaas.monitoring.spool import spool_dir
from aipaas.settings import Settings
from tests.conftest import make_settings, settings_env
from tests.support.models import FEATURES, log_lgbm
from tests.support.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
REPLICA = "x-aipaas-replica"
ROW = dict.fromkeys(FEATURES, 1.0)
# A killed replica must come back; how fast is measured (printed here, 2-4 s in
# the README's figures against the 10 s), not judged: a loaded CI host
# took 10.9 s once. This bound only catches a replica that never returns.
RESTART_BOUND_S = 30.0


@dataclass
class Served:
    settings: Settings
    proc: subprocess.Popen[bytes]
    base: str
    key: str  # plenty of rate: 10000/s

    def replica_pids(self) -> set[int]:
        return {int(p) for p in _children(self.proc.pid)}


def _children(pid: int) -> list[str]:
    """The supervisor's replicas (not multiprocessing's resource tracker, its other child)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    replicas = []
    for child in out.split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"resource_tracker" not in cmdline:
            replicas.append(child)
    return replicas


def _predict(base: str, key: str) -> httpx.Response:
    """One request on a fresh connection, so the kernel may hand it to either replica."""
    return httpx.post(
        f"{base}/predict", json=ROW, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def _wait_both(base: str, key: str, proc: subprocess.Popen[bytes], timeout_s: float) -> set[str]:
    """Requests until two replicas have answered 200 (each loads its model at start)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < 2:
        assert proc.poll() is None, f"aipaas serve exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"only replicas {seen} answered in {timeout_s} s"
        try:
            r = _predict(base, key)
            if r.status_code == 200:
                seen.add(r.headers[REPLICA])
        except httpx.TransportError:
            time.sleep(0.3)
    return seen


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("replicas") / "home"
    home.mkdir()
    s = make_settings(home)
    log_lgbm(s)
    key = keys.create_key(s, "many", "predict", rate="10000/s")[1]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIPAAS_")}
    env.update(settings_env(s), AIPAAS_SERVING__RELOAD_POLL_S="600", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", "from aipaas.cli import main; main()", "serve",
           "--replicas", "2", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_both(base, key, proc, timeout_s=240)  # spawn, imports, model: slow on a busy host
        yield Served(s, proc, base, key)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # only this test's session
            proc.wait(10)


def test_both_replicas_answer_on_one_port_with_their_own_spool(served: Served) -> None:
    pids = served.replica_pids()
    assert len(pids) == 2, pids
    answered = {int(_predict(served.base, served.key).headers[REPLICA]) for _ in range(40)}
    assert answered == pids  # both answer, and only the supervisor's replicas
    segments = [p.name for p in spool_dir(served.settings).glob("*.seg")]
    writers = {int(name.split("-")[1]) for name in segments}
    assert pids <= writers, segments  # one spool segment per replica


def _hammer(base: str, key: str, seconds: float, connections: int) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        mine = []
        # A new connection per request: the kernel hands each to whichever
        # replica accepts first (keep-alive connections can all land on one).
        headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
        with httpx.Client(base_url=base, headers=headers) as c:
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


def test_a_rate_limit_holds_in_total_across_replicas(served: Served) -> None:
    rate = 20
    key = keys.create_key(served.settings, "limited", "predict", rate=f"{rate}/s")[1]
    # Both replicas hold the key before the clock starts (a cache miss reads the
    # database while the bucket sits full), and the bucket refills to its burst.
    _wait_both(served.base, key, served.proc, timeout_s=30)
    time.sleep(1.5)
    t0 = time.monotonic()
    results = _hammer(served.base, key, seconds=5.0, connections=6)
    elapsed = time.monotonic() - t0
    accepted = [pid for status, pid in results if status == 200]
    refused = sum(1 for status, _ in results if status == 429)
    assert len(accepted) + refused == len(results), {s for s, _ in results}
    assert len(set(accepted)) == 2, "both replicas must have accepted some"
    allowed = rate * elapsed + rate  # the rate over the run, plus one burst
    print(f"accepted {len(accepted)}, refused {refused}, allowed {allowed:.1f} in {elapsed:.2f} s")
    # The invariant: never more than the rate in total, whichever replica answers.
    assert len(accepted) <= 1.05 * allowed, (len(accepted), allowed, elapsed)
    # And not much less, when the clients kept the bucket empty: offered at
    # least 3x the rate (a host too busy to offer that is measured, not judged).
    # 10% under: a loaded CI host can stall both replicas for half a second, and
    # a full bucket cannot bank what arrives in the pause (111 of 120.6 seen).
    if len(results) >= 3 * allowed:
        assert len(accepted) >= 0.9 * allowed, (len(accepted), allowed, len(results))


def _answered_200(text: str) -> float:
    """The ``/predict`` requests answered 200, as one scrape of /metrics counts them."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "aipaas_requests_total"
        and sample.labels.get("route") == "/predict"
        and sample.labels.get("status") == "200"
    )


def test_metrics_of_any_replica_count_every_replica(served: Served) -> None:
    """A scrape, whichever replica answers it, sums what both replicas served."""
    key = keys.create_key(served.settings, "counted", "predict", rate="10000/s")[1]
    _wait_both(served.base, key, served.proc, timeout_s=30)
    before = _answered_200(httpx.get(f"{served.base}/metrics", timeout=10).text)
    answered: list[str] = []
    while len(answered) < 30 or len(set(answered)) < 2:  # both replicas serve some
        assert len(answered) < 400, f"only replica {set(answered)} answered"
        answered.append(_predict(served.base, served.key).headers[REPLICA])
    scraped: dict[str, float] = {}
    deadline = time.monotonic() + 20
    while len(scraped) < 2 and time.monotonic() < deadline:
        r = httpx.get(f"{served.base}/metrics", timeout=10)  # a new connection each
        scraped[r.headers[REPLICA]] = _answered_200(r.text)
    assert len(scraped) == 2, f"only replica {list(scraped)} answered /metrics"
    assert set(scraped.values()) == {before + len(answered)}, (before, scraped)


def test_a_revoked_key_is_refused_by_every_replica_within_2_s(served: Served) -> None:
    record, key = keys.create_key(served.settings, "doomed", "predict", rate="10000/s")
    warm = _wait_both(served.base, key, served.proc, timeout_s=30)  # cached on both
    keys.revoke_key(served.settings, record.id)
    revoked = time.monotonic()
    late_ok: list[float] = []
    refused_by: set[str] = set()
    while time.monotonic() - revoked < 3.0:
        at = time.monotonic() - revoked  # sent at: one accepted at 1.99 s may answer at 2.02 s
        r = _predict(served.base, key)
        if r.status_code == 200 and at > 2.0:
            late_ok.append(at)
        elif r.status_code == 401:
            refused_by.add(r.headers[REPLICA])
    assert not late_ok, f"answered {len(late_ok)} times more than 2 s after revocation"
    assert refused_by == warm


def test_a_replica_killed_is_started_again(served: Served) -> None:
    """Back and answering after ``kill -9`` (time printed), the other answering meanwhile.

    The supervisor sees the death at once and forks the new replica from
    itself with the libraries imported (see :mod:`aipaas.ops.replicas`):
    3.6-5.8 s measured here under load, against 13.6-21 s for a replica
    started afresh (``--no-preload``).
    """
    before = served.replica_pids()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    seen: set[str] = set()
    failed: list[str] = []
    while len(seen) < 2:
        assert served.proc.poll() is None, f"aipaas serve exited with {served.proc.returncode}"
        assert time.monotonic() - t0 < 60, f"only replicas {seen} answered in 60 s"
        try:
            r = _predict(served.base, served.key)
        except httpx.TransportError as err:  # nobody may fail while one replica restarts
            failed.append(repr(err))
            continue
        if r.status_code == 200:
            seen.add(r.headers[REPLICA])
        else:
            failed.append(f"{r.status_code} {r.text[:200]}")
    took = time.monotonic() - t0
    print(f"replica back and answering in {took:.1f} s")
    assert str(victim) not in seen
    assert len(served.replica_pids()) == 2
    assert not failed, failed[:5]
    assert took < RESTART_BOUND_S, f"the killed replica answered again after {took:.1f} s"


def test_sigterm_stops_every_replica(served: Served) -> None:
    pids = served.replica_pids()
    assert len(pids) == 2
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(30) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"replica {pid} outlived its supervisor"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served.base}/healthz", timeout=2)


def test_two_openers_of_the_bucket_file_share_one_bucket(tmp_path: Path) -> None:
    """Two replicas' views (each its own open file and flock) take from one bucket."""
    from aipaas.inference.keys import RateLimiter
    from aipaas.inference.ratelimit import SharedBuckets

    a, b = SharedBuckets(tmp_path / "r.bin"), SharedBuckets(tmp_path / "r.bin")
    shared = [(a if i % 2 else b).acquire("k", 0.001, 5.0) == 0.0 for i in range(20)]
    assert sum(shared) == 5  # one burst of 5 in total, not one per replica
    assert b.acquire("other", 0.001, 5.0) == 0.0  # another key has its own
    local = [RateLimiter("5/s"), RateLimiter("5/s")]
    per_process = [local[i % 2].acquire("k", None) == 0.0 for i in range(20)]
    assert sum(per_process) == 10  # what replicas with their own buckets would allow
    a.close()
    b.close()


def _exits(code: int) -> Callable[[int], None]:
    def target(slot: int) -> None:
        time.sleep(0.05)
        os._exit(code)  # as a replica that crashes: no clean-up

    return target


def test_the_replica_supervisor_restarts_at_once_then_backs_off_then_gives_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aipaas.ops.replicas import LOG, ReplicaPolicy, supervise

    policy = ReplicaPolicy(backoff_s=0.1, max_backoff_s=0.2, max_in_a_row=3, stop_grace_s=2)
    assert [policy.delay(n) for n in range(1, 5)] == [0.0, 0.1, 0.2, 0.2]
    t0 = time.monotonic()
    with caplog.at_level("INFO", logger=LOG.name):
        assert supervise(1, _exits(1), policy=policy) == 1  # a crash loop is not hidden
    # 4 runs of 0.05 s and pauses of 0, 0.1 and 0.2 s: well under a second unless stuck.
    assert time.monotonic() - t0 < 5
    said = [r.getMessage() for r in caplog.records]
    deaths = [m.split("; ", 1)[1] for m in said if "exited with 1 after" in m]
    assert deaths == [
        "starting it again",
        "starting it again in 0.1 s (2 crashes in a row)",
        "starting it again in 0.2 s (3 crashes in a row)",
    ], said
    assert len([m for m in said if "started again" in m]) == 3
    assert "crashed 4 times in a row" in said[-1]


def test_a_replica_whose_app_cannot_start_stops_the_supervisor_at_once() -> None:
    from aipaas.ops.replicas import supervise

    t0 = time.monotonic()
    assert supervise(2, _exits(3), startup_failure=3) == 1
    assert time.monotonic() - t0 < 5
