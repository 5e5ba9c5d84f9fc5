"""``aipaas up`` brings a killed child back, for real: the serving API after ``kill -9``.

The platform is the one a person starts (Prefect, MLflow, the Ray head, a
worker, serving, the profiler) on free ports in a temporary home, without
the lifecycle (``--no-lifecycle``: serving answers ``/healthz`` without a
model, and no flow run competes for the two cores). The serving process is
killed with SIGKILL; ``up`` must start it again and serving answer
``/healthz`` again (the time is printed: 5.4 s at load 4.5, most of it
serving's own start), the restart must be on the audit chain
(which ``aipaas audit verify`` still passes), the other children must not
have been touched, and Ctrl-C must still stop every child and what they
started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from aipaas.settings import PROJECT_ROOT
from tests.support.platform import CLI, Platform, alive, get, running_up, stop

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``: what a child left behind."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _cli(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=PROJECT_ROOT,
        env=platform.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _healthz(platform: Platform) -> bool:
    try:
        return get(platform.url("serving", "/healthz"))[0] == 200
    except OSError:
        return False


def test_serving_killed_with_sigkill_is_back_audited_and_ctrl_c_stops_all(tmp_path: Path) -> None:
    # No lifecycle and no Ray head: nothing here trains, and a Ray start is the
    # slowest, least predictable part of `up` on a busy machine.
    no_ray = {"AIPAAS_RAY__HEAD": "false"}
    with running_up(tmp_path, no_ray, args=("--no-lifecycle",)) as platform:
        _kill_serving_and_see_it_back(platform)


def _kill_serving_and_see_it_back(platform: Platform) -> None:
    """Kill -9 serving: back, audited, nothing else touched; then Ctrl-C stops all."""
    before = platform.children()
    assert set(before) == {"prefect", "mlflow", "worker", "serving", "profiler"}
    assert _healthz(platform)

    killed = before["serving"]
    os.kill(killed, signal.SIGKILL)
    killed_at = time.monotonic()
    # Back: up.json names a new serving process, and /healthz answers.
    respawn_s = None
    while True:
        back_s = time.monotonic() - killed_at
        assert back_s < 60, platform.diagnosis()[-8000:]
        pid = platform.children()["serving"]
        if pid != killed:
            respawn_s = respawn_s or back_s
            if _healthz(platform):
                break
        time.sleep(0.1)
    assert respawn_s is not None
    print(
        f"\nserving answered /healthz again {back_s:.2f} s after kill -9 (pid {killed} -> "
        f"{pid}): restarted after {respawn_s:.2f} s, its own start {back_s - respawn_s:.2f} s"
    )
    # up's part (noticing, the pause, the new process) is small; the rest is serving's
    # start, which a busy 2-core machine stretches (17 s seen at a load of 10): the
    # figure is printed and in the README, not asserted (timings drift here).
    assert respawn_s < 10.0, platform.output()
    assert alive(pid) and not _group_alive(killed)

    output = platform.output()
    assert f"serving (pid {killed}) exited with code -9; restarting it in 0.5 s" in output
    deadline = time.monotonic() + 30
    while "serving is back" not in platform.output():
        assert time.monotonic() < deadline, platform.output()
        time.sleep(0.2)
    log = (platform.home / "run" / "logs" / "serving.log").read_text()
    assert "restarting (restart 1, after exit code -9)" in log

    # Audited, and the chain still verifies.
    deadline = time.monotonic() + 30
    while True:
        tail = _cli(platform, "audit", "tail", "-n", "50", "--json")
        assert tail.returncode == 0, tail.stdout + tail.stderr
        events = [json.loads(line) for line in tail.stdout.splitlines() if line.strip()]
        restarted = [e for e in events if e["event"] == "platform.restarted"]
        if restarted:
            break
        assert time.monotonic() < deadline, tail.stdout + platform.output()
        time.sleep(0.5)
    detail = json.loads(restarted[0]["detail"])
    assert detail["service"] == "serving" and detail["exit_code"] == -9
    assert detail["restarts"] == 1 and detail["pid"] == pid
    verify = _cli(platform, "audit", "verify")
    assert verify.returncode == 0 and "audit chain OK" in verify.stdout, verify.stderr

    # Nothing else was restarted.
    after = platform.children()
    assert {k: v for k, v in after.items() if k != "serving"} == {
        k: v for k, v in before.items() if k != "serving"
    }
    assert platform.output().count("restarted ") == 1

    # Ctrl-C: every child (the new serving included) and what it started are gone.
    assert stop(platform, grace_s=120) == 0, platform.output()[-4000:]
    left = {name: _group_alive(pid) for name, pid in after.items()}
    assert not any(left.values()), left
    assert not (platform.home / "run" / "up.json").exists()
