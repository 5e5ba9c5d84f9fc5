"""``up``'s Ray head, for real: a flow-run-like driver joins it with the token, others cannot."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from aipaas.ops import up
from aipaas.settings import Settings

pytestmark = pytest.mark.slow

# What a flow run on the worker does first (train.prepare_data), then one task.
DRIVER = """
import time
import ray
from aipaas.settings import get_settings
from aipaas.training.raycluster import ensure_ray
t0 = time.perf_counter()
info = ensure_ray(get_settings().ray)
print("joined", info.address, info.nodes, info.cpus, round(time.perf_counter() - t0, 2))
print("answer", ray.get(ray.remote(lambda: 40 + 2).remote()))
"""


def _drivers(*envs: dict[str, str]) -> list[tuple[int, str, str]]:
    """Run one driver per environment, at once; (exit code, stdout, stderr) of each."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AIPAAS_RAY"))}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER],
            env={**clean, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in envs
    ]
    out = [p.communicate(timeout=120) for p in procs]
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, out, strict=True)]


def test_flow_runs_join_the_head_up_keeps_and_need_its_token(settings: Settings) -> None:
    s = Settings(_env_file=None, home=settings.home, ray={"num_cpus": 1})
    head = up.ray_head_service(s)
    worker_env = next(svc for svc in up.plan(s) if svc.name == "worker").env
    seen: dict[str, tuple[int, str, str]] = {}
    pids: list[int] = []

    def on_ready(sup: up.Supervisor) -> None:
        pids.append(sup.running[0].process.pid)
        # The worker's environment names a head; use the one this test started.
        env = {**worker_env, "AIPAAS_RAY__ADDRESS": f"127.0.0.1:{head.port}"}
        without_token = {"AIPAAS_RAY__ADDRESS": env["AIPAAS_RAY__ADDRESS"]}
        seen["joined"], seen["no_token"] = _drivers(env, without_token)

    def echo(line: str) -> None:  # shown with `pytest -s`: how long each step took
        print(time.strftime("%X"), line)

    assert up.run(s, [head], on_ready=on_ready, echo=echo, stay=False) == 0
    code, out, err = seen["joined"]
    assert code == 0, out + err
    assert "answer 42" in out
    # One node, the head's one CPU: the driver joined it rather than starting its own.
    assert " 1 1.0 " in out.splitlines()[0] + " "
    code, out, err = seen["no_token"]
    assert code != 0
    assert "cannot join the Ray cluster" in err
    # Stopped with the platform: nothing of its process group is left running
    # (killed processes linger a moment as zombies until they are reaped).
    deadline = time.monotonic() + 10
    while _alive_in_group(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive_in_group(pids[0]) == []


def _alive_in_group(pgid: int) -> list[str]:
    ps = subprocess.run(
        ["ps", "-o", "stat=,args=", "-g", str(pgid)], capture_output=True, text=True, check=False
    )
    return [line for line in ps.stdout.splitlines() if line.strip() and not line.startswith("Z")]
