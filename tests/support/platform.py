"""A whole ``aipaas up`` for e2e tests and benchmarks: free ports, a private project and home.

``start_up`` is the ``make up`` of a fresh clone, on a private data project
(nothing reproduced yet) with the demo's defaults (:data:`DEMO_ENV`: small
profile windows, a short cooldown) and a small search (2 samples, 2 folds),
which the profiler and the worker read at start-up. The caller adds the
settings it tests (the team's PostgreSQL stores, the models to serve).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aipaas.cli.demo import DEMO_ENV
from aipaas.ops.up import tail
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import promotion_log
from tests.support.net import free_port
from tests.support.project import new_project

CLI = [sys.executable, "-c", "from aipaas.cli import main; main()"]
UP_LINE = "Ctrl-C stops everything."


@dataclass
class Platform:
    proc: subprocess.Popen[bytes]
    home: Path
    repo: Path
    out: Path
    ports: dict[str, int]
    env: dict[str, str]
    started: float  # time.monotonic() when `aipaas up` was started
    up_s: float = 0.0  # seconds until it said it was up

    def output(self) -> str:
        return self.out.read_text()

    def url(self, service: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def children(self) -> dict[str, int]:
        state = json.loads((self.home / "run" / "up.json").read_text())
        return {s["name"]: s["pid"] for s in state["services"]}

    def settings(self) -> Settings:
        """The platform's settings as its children see them (its home, its platform database)."""
        db_url = self.env.get("AIPAAS_AUDIT__DB_URL", "")
        return Settings(_env_file=None, home=self.home, audit={"db_url": db_url})

    def diagnosis(self) -> str:
        """What a failed wait needs: up's output, the decisions so far, the children's log tails."""
        decisions = promotion_log.read(self.settings())
        logs = sorted((self.home / "run" / "logs").glob("*.log"))
        tails = "\n".join(f"--- {p.name}\n{tail(p, 40)}" for p in logs if p.stem != "prefect")
        return f"{self.output()}\ndecisions: {decisions}\n{tails}"

    def ray_address(self) -> str:
        """The Ray head ``up`` started (from the worker's line in up's summary)."""
        for line in self.output().splitlines():
            if line.strip().startswith("worker") and ", Ray at " in line:
                return line.split(", Ray at ", 1)[1].split(")")[0].split()[0]
        raise AssertionError(f"no Ray head in up's output:\n{self.output()}")

    def wait_served(self, models: dict[str, str], timeout_s: float) -> None:
        """Until ``/readyz`` shows each model at its version."""
        deadline = time.monotonic() + timeout_s
        ready = ""
        while not all(f'"{m}":"{v}"' in ready.replace(" ", "") for m, v in models.items()):
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, (ready, self.diagnosis()[-12000:])
            try:
                ready = get(self.url("serving", "/readyz"))[1]
            except OSError:  # 503 until a champion is loaded
                ready = ""
            time.sleep(1)

    def demo(self, *args: str, timeout_s: float = 1800) -> str:
        """``aipaas demo ARGS`` on this platform; its output (also in ``demo.out`` beside up's)."""
        proc = subprocess.run(
            [*CLI, "demo", *args],
            cwd=PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        out = proc.stdout + proc.stderr
        (self.out.parent / "demo.out").write_text(out)
        print(out)  # the demo's timestamped steps, shown with `pytest -s`
        assert proc.returncode == 0, out[-6000:] + self.diagnosis()[-8000:]
        return out


def up_env(root: Path, extra: dict[str, str] | None = None) -> tuple[dict[str, str], Path]:
    """The environment of an ``aipaas up`` on a new private project under ``root``; and the repo."""
    repo = new_project(root / "project")
    ports = {"prefect": free_port(), "mlflow": free_port(), "serving": free_port()}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIPAAS_", "PREFECT_"))},
        # The demo's defaults go to `up`: its profiler and worker read them.
        **DEMO_ENV,
        "AIPAAS_HOME": str(root / "home"),
        "AIPAAS_PREFECT__PORT": str(ports["prefect"]),
        "AIPAAS_MLFLOW__PORT": str(ports["mlflow"]),
        "AIPAAS_SERVING__PORT": str(ports["serving"]),
        "AIPAAS_DATA__DIR": str(repo / "data"),
        "AIPAAS_DATA__EXPECTATIONS_DIR": str(repo / "expectations"),
        "AIPAAS_VERSIONING__REPO": str(repo),
        "AIPAAS_TUNE__NUM_SAMPLES": "2",
        "AIPAAS_TUNE__CV_FOLDS": "2",
        # The worker picks up a run within 1 s instead of Prefect's 10 s.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        **(extra or {}),
    }
    return env, repo


@contextmanager
def running_up(
    root: Path,
    extra: dict[str, str] | None = None,
    *,
    args: tuple[str, ...] = (),
    timeout_s: float = 300,
) -> Iterator[Platform]:
    """``aipaas up ARGS`` until it says it is up; killed (its whole session) on the way out."""
    env, repo = up_env(root, extra)
    ports = {s: int(env[f"AIPAAS_{s.upper()}__PORT"]) for s in ("prefect", "mlflow", "serving")}
    out_path = root / "up.out"
    with out_path.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [*CLI, "up", *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        up = Platform(proc, Path(env["AIPAAS_HOME"]), repo, out_path, ports, env, started)
        try:
            deadline = started + timeout_s
            while UP_LINE not in up.output():
                assert proc.poll() is None, up.output()
                assert time.monotonic() < deadline, up.output()
                time.sleep(0.5)
            up.up_s = time.monotonic() - started
            yield up
        finally:
            stop(up, grace_s=0)


def stop(up: Platform, grace_s: float = 120) -> int | None:
    """Ctrl-C (SIGINT) and wait; the whole session killed after ``grace_s``. Up's exit code."""
    if up.proc.poll() is None and grace_s > 0:
        up.proc.send_signal(signal.SIGINT)
        try:
            return up.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    if up.proc.poll() is None:
        os.killpg(up.proc.pid, signal.SIGKILL)
        up.proc.wait(10)
    return up.proc.returncode


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return int(resp.status), resp.read().decode()


def get_json(url: str, body: Any = None) -> Any:
    """GET (POST with ``body``) ``url`` as JSON."""
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
