"""Coordination across processes and hosts: one lock per name, signals and histories shared.

Hosts are simulated by processes with homes of their own that name one
platform database; every test runs on SQLite (one host, homes sharing the
database file) and on a real PostgreSQL.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aipaas import coordination
from aipaas.settings import Settings
from aipaas.training import signals
from tests.conftest import settings_env


@pytest.fixture
def settings(platform_settings: Settings) -> Settings:
    return platform_settings


def _host(settings: Settings, home: Path, *args: str, code: str) -> subprocess.Popen[str]:
    """A process with a home of its own on ``settings``' platform database."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **settings_env(settings), "AIPAAS_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


CRITICAL = """
import os, pathlib, sys, time
from aipaas import coordination
from aipaas.settings import get_settings
log, go, rounds = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
settings = get_settings()
while not go.exists():
    time.sleep(0.002)
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
for _ in range(rounds):
    with coordination.lock(settings, "drift:diagnosis"):
        os.write(fd, f"enter {os.getpid()}\\n".encode())
        time.sleep(0.01)
        os.write(fd, f"exit {os.getpid()}\\n".encode())
"""


def test_the_critical_section_never_overlaps_across_hosts(settings: Settings, tmp_path: Path):
    log, go = tmp_path / "log", tmp_path / "go"
    procs = [
        _host(settings, tmp_path / f"host-{i}", str(log), str(go), "15", code=CRITICAL)
        for i in range(3)
    ]
    time.sleep(1.0)  # all three started and waiting
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    lines = log.read_text().split()
    events = list(zip(lines[0::2], lines[1::2], strict=True))
    assert len(events) == 3 * 15 * 2
    for enter, exit_ in zip(events[0::2], events[1::2], strict=True):
        assert enter[0] == "enter" and exit_ == ("exit", enter[1]), "two holders at once"
    assert len({pid for _, pid in events}) == 3  # all three took turns


HOLD = """
import sys, time
from aipaas import coordination
from aipaas.settings import get_settings
with coordination.lock(get_settings(), sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_holder_that_dies_releases_the_lock(settings: Settings, tmp_path: Path):
    holder = _host(settings, tmp_path / "host-a", "retrain:diagnosis", code=HOLD)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        waiting = _host(settings, tmp_path / "host-b", "retrain:diagnosis", code=HOLD)
        try:
            assert waiting.stdout is not None
            readable, _, _ = select.select([waiting.stdout], [], [], 1.5)
            assert not readable, "a second holder got the lock while the first held it"
            os.kill(holder.pid, signal.SIGKILL)  # no cleanup: the server / kernel releases it
            started = time.monotonic()
            assert waiting.stdout.readline().strip() == "held"
            assert time.monotonic() - started < 10
        finally:
            waiting.kill()
            waiting.wait()
    finally:
        holder.kill()
        holder.wait()


def test_locks_of_other_names_do_not_wait_and_a_thread_cannot_take_its_own_twice(
    settings: Settings,
):
    with coordination.lock(settings, "drift:diagnosis"):
        with coordination.lock(settings, "drift:other"):  # another name: no wait
            pass
        with pytest.raises(RuntimeError, match="already held by this thread"):
            with coordination.lock(settings, "drift:diagnosis"):
                pass
    with coordination.lock(settings, "drift:diagnosis"):  # released, and free again
        pass


def test_the_lock_key_is_stable_across_runs_and_hosts():
    # A constant: every host must compute the same key for the same name.
    assert coordination.lock_key("drift:diagnosis") == coordination.lock_key("drift:diagnosis")
    assert coordination.lock_key("drift:diagnosis") == STABLE_KEY
    assert coordination.lock_key("drift:diagnosis") != coordination.lock_key("drift:other")


STABLE_KEY = -6060271318288160211  # blake2b-64 of "aipaas:drift:diagnosis", signed


def test_the_sqlite_lock_file_sits_beside_the_database(tmp_path: Path):
    s = Settings(
        _env_file=None, home=tmp_path / "a", audit={"db_url": f"sqlite:///{tmp_path}/p.db"}
    )
    path = coordination.lock_path(s, "import:/x/y history.jsonl")
    assert path.parent == tmp_path / "p.db.locks"
    assert "/" not in path.name and " " not in path.name


NOTIFY = """
from aipaas.settings import get_settings
from aipaas.training import signals
signals.notify_champion_changed(get_settings(), "diagnosis")
"""


def test_a_promotion_on_one_host_reloads_serving_on_another(settings: Settings, tmp_path: Path):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from tests.support.serving import FakeSource

    source = FakeSource()
    serving = settings.serving.model_copy(update={"reload_poll_s": 3600})
    s = settings.model_copy(update={"serving": serving})
    with TestClient(create_app(s, model_source=source)) as c:  # follows champions
        assert c.get("/readyz").json()["models"]["diagnosis"] == "1"
        source.champions["diagnosis"] = "2"  # the registry every host reads
        time.sleep(1.5)
        assert c.get("/readyz").json()["models"]["diagnosis"] == "1"  # no signal: no reload
        promoter = _host(settings, tmp_path / "host-b", code=NOTIFY)
        _, err = promoter.communicate(timeout=60)
        assert promoter.returncode == 0, err
        signalled = time.monotonic()
        while c.get("/readyz").json()["models"]["diagnosis"] != "2":
            assert time.monotonic() - signalled < 10, "the signal did not trigger a reload"
            time.sleep(0.05)
    assert signals.champion_generation(settings, "diagnosis") == 1


CLAIM = """
import pathlib, sys, time
from aipaas.monitoring import retrain
from aipaas.settings import get_settings
settings = get_settings()
retrain.started_at(settings, "warm-up")  # connected and migrated before the start
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.001)
for i in range(int(sys.argv[2])):
    print(retrain.claim(settings, f"model-{i}").allowed, flush=True)
"""


def test_drift_runs_racing_on_several_hosts_let_one_retrain_through(
    settings: Settings, tmp_path: Path
):
    """Four hosts ask for a retrain of each of 20 models at once: one per model may start."""
    from aipaas.monitoring import retrain

    go, models = tmp_path / "go", 20
    hosts = [
        _host(settings, tmp_path / f"host-{i}", str(go), str(models), code=CLAIM) for i in range(4)
    ]
    time.sleep(3.0)  # every host warmed up and waiting
    go.touch()
    answers = []
    for p in hosts:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        answers.append(out.split())
    for i in range(models):
        assert sorted(a[i] for a in answers) == ["False", "False", "False", "True"], i
        assert len(retrain.started_at(settings, f"model-{i}")) == 1  # counted once
    verdict = retrain.guardrail_verdict(settings, "model-0")
    assert not verdict.allowed and "cooldown" in verdict.reasons[0]


REFUSE = """
from aipaas.monitoring import retrain
from aipaas.settings import get_settings
settings = get_settings()
verdict = retrain.claim(settings, "diagnosis")
retrain.record_refusal(settings, "diagnosis", "drift on host b", verdict)
"""


def test_hosts_see_each_others_retrain_history_and_guardrail_state(
    settings: Settings, tmp_path: Path
):
    from aipaas.monitoring import retrain
    from aipaas.monitoring.retrain import FeedbackExport

    verdict = retrain.claim(settings, "diagnosis")  # host a starts a retrain
    assert verdict.allowed
    with retrain.attempt(
        settings, "diagnosis", "drift on host a", verdict, FeedbackExport(None)
    ) as run:
        run.decided("promoted")
    other = _host(settings, tmp_path / "host-b", code=REFUSE)
    _, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    history = retrain.retrain_history(settings, "diagnosis")
    assert [(e.reason, e.action) for e in history] == [
        ("drift on host a", "retrained"),
        ("drift on host b", "skipped"),  # host b saw host a's start: the cooldown held
    ]
    assert "cooldown" in history[1].guardrails[0]
