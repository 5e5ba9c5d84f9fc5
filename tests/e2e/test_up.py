"""``aipaas up`` for real: servers on free ports in a temporary home, then Ctrl-C.

Checks what a person sees: the servers answer, a second ``up`` refuses and
names the first, and after SIGINT every child process is gone and the ports
are free again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from aipaas.exceptions import AlreadyRunningError
from aipaas.settings import PROJECT_ROOT
from tests.support.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CLI = [sys.executable, "-c", "from aipaas.cli import main; main()"]


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return int(resp.status)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_up_starts_refuses_a_second_and_stops_everything(home: Path, tmp_path: Path) -> None:
    ports = {"prefect": free_port(), "mlflow": free_port(), "serving": free_port()}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIPAAS_", "PREFECT_"))},
        "AIPAAS_HOME": str(home),
        "AIPAAS_PREFECT__PORT": str(ports["prefect"]),
        "AIPAAS_MLFLOW__PORT": str(ports["mlflow"]),
        "AIPAAS_SERVING__PORT": str(ports["serving"]),
    }
    out_path = tmp_path / "up.out"
    out = out_path.open("wb")
    proc = subprocess.Popen(
        [*CLI, "up", "--no-lifecycle"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    state_path = home / "run" / "up.json"
    try:
        deadline = time.monotonic() + 300
        while "Ctrl-C stops everything." not in out_path.read_text():
            assert proc.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(1)
        text = out_path.read_text()
        assert f"http://127.0.0.1:{ports['prefect']}" in text
        assert f"http://127.0.0.1:{ports['mlflow']}" in text
        assert "deployments: data" in text and "lifecycle" in text

        assert _get(f"http://127.0.0.1:{ports['prefect']}/api/health") == 200
        assert _get(f"http://127.0.0.1:{ports['mlflow']}/health") == 200
        assert (
            _get(f"http://127.0.0.1:{ports['prefect']}/api/deployments/name/lifecycle/lifecycle")
            == 200
        )
        state = json.loads(state_path.read_text())
        children = {s["name"]: s["pid"] for s in state["services"]}
        assert {"prefect", "mlflow", "runner"} <= set(children)
        if "serving" in children:
            assert _get(f"http://127.0.0.1:{ports['serving']}/healthz") == 200
        assert all(_alive(pid) for pid in children.values())

        second = subprocess.run(
            [*CLI, "up", "--no-lifecycle"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == AlreadyRunningError.exit_code, second.stderr
        assert "already running" in second.stderr and str(proc.pid) in second.stderr

        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, out_path.read_text()
        text = out_path.read_text()
        assert "stopped prefect" in text and "ignored SIGTERM" not in text, text
        assert not [name for name, pid in children.items() if _alive(pid)], text
        assert not state_path.exists()
        from aipaas.ops.up import port_free

        assert all(port_free("127.0.0.1", p) for p in ports.values())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        out.close()


def test_up_runs_the_lifecycle_when_no_champion_serves(home: Path, tmp_path: Path) -> None:
    """The ``make up`` first run: no champion, so the lifecycle runs through Prefect
    and serving answers with the promoted version, all on a private data project."""
    from tests.support.project import new_project

    repo = new_project(tmp_path / "project")  # fresh clone: nothing reproduced yet
    ports = {"prefect": free_port(), "mlflow": free_port(), "serving": free_port()}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIPAAS_", "PREFECT_"))},
        "AIPAAS_HOME": str(home),
        "AIPAAS_PREFECT__PORT": str(ports["prefect"]),
        "AIPAAS_MLFLOW__PORT": str(ports["mlflow"]),
        "AIPAAS_SERVING__PORT": str(ports["serving"]),
        "AIPAAS_DATA__DIR": str(repo / "data"),
        "AIPAAS_DATA__EXPECTATIONS_DIR": str(repo / "expectations"),
        "AIPAAS_VERSIONING__REPO": str(repo),
        "AIPAAS_TUNE__NUM_SAMPLES": "2",
        "AIPAAS_TUNE__CV_FOLDS": "2",
    }
    out_path = tmp_path / "up.out"
    out = out_path.open("wb")
    proc = subprocess.Popen(
        [*CLI, "up"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        ready = ""
        while '"diagnosis":"1"' not in ready.replace(" ", ""):
            assert proc.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, (out_path.read_text(), ready)
            time.sleep(3)
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{ports['serving']}/readyz", timeout=5
                ) as resp:
                    ready = resp.read().decode()
            except OSError:  # 503 until a champion is loaded, or not up yet
                ready = ""
        text = out_path.read_text()
        assert "diagnosis: no champion yet; started the lifecycle" in text
        assert f"http://127.0.0.1:{ports['prefect']}/runs/flow-run/" in text
        log = [json.loads(line) for line in (home / "promotions.jsonl").read_text().splitlines()]
        assert [(r["model"], r["version"], r["result"]) for r in log] == [
            ("diagnosis", "1", "promoted")
        ]
        assert log[0]["decided_by"].startswith("prefect flow run ")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, out_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        out.close()
