"""``aipaas up`` and ``aipaas demo`` for real: one platform on free ports in a temporary home.

The ``make up`` first run, checked as a person sees it: the servers answer and
say where they are, a second ``up`` refuses and names the first, the lifecycle
runs through Prefect because no champion exists and serving answers with the
promoted version. Then ``aipaas demo`` closes the loop on that platform:
ordinary traffic from keyed clients -> no drift; shifted traffic with feedback
-> drift -> retrain (feedback rows become a new DVC version) -> gates ->
champion v2 served, with no failed request and the audit chain verified.
Finally, after SIGINT every child process is gone and the ports are free again.

One platform serves all five tests (it takes a minute to start, the lifecycle
another one and a half); they run in the order written, each building on the
state the previous one left, the last one stopping it. The platform runs with
the demo's defaults (:data:`aipaas.cli.demo.DEMO_ENV`: small profile windows, a
short retrain cooldown), which the profiler and the worker read at start-up.
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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from aipaas.cli.demo import DEMO_ENV
from aipaas.exceptions import AlreadyRunningError
from aipaas.inference import keys
from aipaas.ops.up import port_free, tail
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import promotion_log
from models.topic import TOPICS
from tests.support.net import free_port
from tests.support.project import new_project

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CLI = [sys.executable, "-c", "from aipaas.cli import main; main()"]


@dataclass
class Platform:
    proc: subprocess.Popen[bytes]
    home: Path
    repo: Path
    out: Path
    ports: dict[str, int]
    env: dict[str, str]

    def output(self) -> str:
        return self.out.read_text()

    def url(self, service: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def diagnosis(self) -> str:
        """What a failed wait needs: up's output, the decisions so far, the flows' log tail."""
        decisions = promotion_log.read(Settings(_env_file=None, home=self.home))
        logs = sorted((self.home / "run" / "logs").glob("*.log"))
        tails = "\n".join(f"--- {p.name}\n{tail(p, 40)}" for p in logs if p.stem != "prefect")
        return f"{self.output()}\ndecisions: {decisions}\n{tails}"

    def children(self) -> dict[str, int]:
        state = json.loads((self.home / "run" / "up.json").read_text())
        return {s["name"]: s["pid"] for s in state["services"]}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """``aipaas up`` on a private data project (a fresh clone: nothing reproduced yet)."""
    root = tmp_path_factory.mktemp("up")
    repo = new_project(root / "project")
    home = root / "home"
    ports = {"prefect": free_port(), "mlflow": free_port(), "serving": free_port()}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIPAAS_", "PREFECT_"))},
        # The demo's defaults go to `up`: its profiler and worker read them.
        **DEMO_ENV,
        "AIPAAS_HOME": str(home),
        "AIPAAS_PREFECT__PORT": str(ports["prefect"]),
        "AIPAAS_MLFLOW__PORT": str(ports["mlflow"]),
        "AIPAAS_SERVING__PORT": str(ports["serving"]),
        "AIPAAS_DATA__DIR": str(repo / "data"),
        "AIPAAS_DATA__EXPECTATIONS_DIR": str(repo / "expectations"),
        "AIPAAS_VERSIONING__REPO": str(repo),
        "AIPAAS_TUNE__NUM_SAMPLES": "2",
        "AIPAAS_TUNE__CV_FOLDS": "2",
        # One retrain per demo: the demo's 5 min cooldown can end while a slow
        # machine still retrains, and a second retrain would share the CPU.
        "AIPAAS_RETRAIN__COOLDOWN_MINUTES": "60",
        # The worker picks up the lifecycle run within 1 s instead of Prefect's 10 s.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    out_path = root / "up.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "up"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        up = Platform(proc, home, repo, out_path, ports, env)
        try:
            deadline = time.monotonic() + 300
            while "Ctrl-C stops everything." not in up.output():
                assert proc.poll() is None, up.output()
                assert time.monotonic() < deadline, up.output()
                time.sleep(0.5)
            yield up
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return int(resp.status), resp.read().decode()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_up_starts_every_service_and_says_where(platform: Platform) -> None:
    text = platform.output()
    assert platform.url("prefect") in text and platform.url("mlflow") in text
    assert platform.url("serving", "/docs") in text
    deployments = "data, train, promote, lifecycle, drift (cron */15 * * * *), retrain"
    assert f"deployments: {deployments}" in text, text
    assert _get(platform.url("prefect", "/api/health"))[0] == 200
    assert _get(platform.url("mlflow", "/health"))[0] == 200
    assert _get(platform.url("serving", "/healthz"))[0] == 200
    deployment = platform.url("prefect", "/api/deployments/name/lifecycle/lifecycle")
    assert _get(deployment)[0] == 200
    children = platform.children()
    assert set(children) == {"prefect", "mlflow", "worker", "serving", "profiler"}
    assert "work pool: 'aipaas'; another machine joins it with `aipaas worker`" in text
    assert all(_alive(pid) for pid in children.values())


def test_a_second_up_refuses_and_names_the_first(platform: Platform) -> None:
    second = subprocess.run(
        [*CLI, "up", "--no-lifecycle"],
        cwd=PROJECT_ROOT,
        env=platform.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == AlreadyRunningError.exit_code, second.stderr
    assert "already running" in second.stderr and str(platform.proc.pid) in second.stderr


def test_up_runs_the_lifecycle_when_no_champion_serves(platform: Platform) -> None:
    """Every defined model (the tabular ``diagnosis``, the text ``topic``) gets its champion."""
    deadline = time.monotonic() + 600
    ready = ""
    while not all(f'"{m}":"1"' in ready.replace(" ", "") for m in ("diagnosis", "topic")):
        assert platform.proc.poll() is None, platform.output()
        assert time.monotonic() < deadline, (ready, platform.diagnosis())
        try:
            ready = _get(platform.url("serving", "/readyz"))[1]
        except OSError:  # 503 until a champion is loaded
            ready = ""
        time.sleep(1)
    text = platform.output()
    assert "diagnosis: no champion yet; started the lifecycle" in text
    assert "topic: no champion yet; started the lifecycle" in text
    assert platform.url("prefect", "/runs/flow-run/") in text
    decisions = promotion_log.read(Settings(_env_file=None, home=platform.home))
    assert sorted((r.model, r.version, r.result) for r in decisions) == [
        ("diagnosis", "1", "promoted"),
        ("topic", "1", "promoted"),
    ]
    assert all(d.decided_by.startswith("flow-run ") for d in decisions)
    # The text model takes the browser snippet's body, {text}, and nothing else.
    _, key = keys.create_key(Settings(_env_file=None, home=platform.home), "e2e-text", "predict")
    request = urllib.request.Request(
        platform.url("serving", "/models/topic/predict"),
        data=json.dumps({"text": "The compiler crashed and the kernel dumped core."}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["model_version"] == "1" and body["output"] in TOPICS, body


def test_demo_closes_the_loop_on_the_running_platform(platform: Platform) -> None:
    """``aipaas demo`` finds the platform up, with champion v1 (the test above), and uses it."""
    proc = subprocess.run(
        [*CLI, "demo"],
        cwd=PROJECT_ROOT,
        env=platform.env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    out = proc.stdout + proc.stderr
    (platform.out.parent / "demo.out").write_text(out)
    print(out)  # the demo's timestamped steps, shown with `pytest -s`
    assert proc.returncode == 0, out[-6000:] + platform.diagnosis()[-8000:]
    assert "aipaas is already up on this home; using it" in out
    # Both demo models, the tabular then the text one, close their loop.
    assert out.index("diagnosis step 1/4") < out.index("topic step 1/4")
    assert out.count("champion v1 serving") == 2
    assert out.count("no drift reported on ordinary traffic") == 2
    assert out.count("drift detected") == 2
    assert out.count("passed its gates; serving swapped to it") == 2
    assert out.count("the retrain learnt from 300 labelled rows") == 2, out
    assert out.count(", failed 0,") == 2
    chains = [line.split("audit chain:")[1] for line in out.splitlines() if "audit chain:" in line]
    assert len(chains) == 2 and all("verified" in c for c in chains), chains
    assert "/models/topic/predict" in out and "text.oov" in out

    # The feedback became training data: a new dataset version with more rows.
    for dataset, rows in (("breast_cancer", 569), ("quotes", None)):
        incoming = list((platform.repo / "data" / "incoming" / dataset).glob("feedback-*.csv"))
        assert incoming, f"no feedback exported for {dataset}"
        raw = pd.read_csv(platform.repo / "data" / dataset / "raw.csv")
        assert rows is None or len(raw) > rows
    # The labelled Linux and Perl quotes are in (the four topics' files hold 19 "perl").
    quotes = pd.read_csv(platform.repo / "data" / "quotes" / "raw.csv")
    assert len(quotes) > 3630 and quotes.text.str.contains("perl", case=False).sum() > 40


def test_ctrl_c_stops_every_child_and_frees_the_ports(platform: Platform) -> None:
    children = platform.children()
    platform.proc.send_signal(signal.SIGINT)
    assert platform.proc.wait(90) == 0, platform.output()
    text = platform.output()
    assert "stopped prefect" in text and "ignored SIGTERM" not in text, text
    assert not [name for name, pid in children.items() if _alive(pid)], text
    assert not (platform.home / "run" / "up.json").exists()
    assert all(port_free("127.0.0.1", p) for p in platform.ports.values())
