"""The supervisor behind ``aipaas up`` restarts a child that dies, with tiny children.

A child killed with SIGKILL comes back (new pid in ``up.json``, the restart in
``up``'s output, in the child's log and on the audit chain); one that keeps
crashing stops the platform with its log tail; Ctrl-C during the pause before
a restart stops everything and starts nothing more. The audit chain is the
platform database of the test's home (``settings``), a real SQLite file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aipaas import audit
from aipaas.ops import up
from aipaas.settings import Settings
from tests.ops.test_up import _http_service
from tests.support.net import free_port

FAST = up.RestartPolicy(backoff_s=0.2, max_backoff_s=0.4, max_restarts=3)


def _state_pids(settings: Settings) -> dict[str, int]:
    state = json.loads((settings.run_dir / "up.json").read_text())
    return {s["name"]: s["pid"] for s in state["services"]}


@contextmanager
def _deadline(box: list[up.Supervisor], seconds: float = 60) -> Iterator[None]:
    """Stop the supervisor (as Ctrl-C does) if the test has not by then; it then fails on
    what it did not see instead of hanging."""
    done = threading.Event()

    def guard() -> None:
        if not done.wait(seconds) and box:
            box[0].stop_requested.set()

    threading.Thread(target=guard, daemon=True).start()
    try:
        yield
    finally:
        done.set()


class _Watch:
    """``up``'s output, with a hook called on each line as the supervisor writes it."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.hooks: list[Callable[[str], None]] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        for hook in self.hooks:
            hook(line)

    def text(self) -> str:
        return "\n".join(self.lines)


def test_a_killed_child_is_restarted_answers_again_and_is_audited(settings: Settings) -> None:
    web, other = _http_service(free_port()), _http_service(free_port(), stage=1)
    out = _Watch()
    seen: dict[str, object] = {}
    sup_box: list[up.Supervisor] = []

    def on_ready(sup: up.Supervisor) -> None:
        sup_box.append(sup)
        seen["old_pid"] = _state_pids(settings)[web.name]
        os.kill(int(seen["old_pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        seen["killed_at"] = time.monotonic()

    def on_line(line: str) -> None:
        if line.startswith(f"{web.name} is back"):
            # What a person sees once it is back: it answers, and up.json names its new pid.
            seen["answers"] = up.http_ok(web.health_url or "")
            seen["other_answers"] = up.http_ok(other.health_url or "")
            seen["new_pid"] = _state_pids(settings)[web.name]
            seen["running_pid"] = sup_box[0].running[0].process.pid
            seen["back_s"] = time.monotonic() - float(seen["killed_at"])  # type: ignore[arg-type]
            sup_box[0].stop_requested.set()

    out.hooks.append(on_line)
    with _deadline(sup_box):
        code = up.run(settings, [web, other], on_ready=on_ready, echo=out, restart=FAST)
    assert code == 0, out.text()
    assert "new_pid" in seen, out.text()
    assert seen["answers"] is True and seen["other_answers"] is True
    assert seen["new_pid"] == seen["running_pid"] != seen["old_pid"]
    assert float(seen["back_s"]) < 15  # type: ignore[arg-type]
    text = out.text()
    assert f"{web.name} (pid {seen['old_pid']}) exited with code -9; restarting it in 0.2 s" in text
    assert f"restarted {web.name}" in text and f"pid {seen['new_pid']}" in text
    # The child's own log says it too, between the two runs' output.
    log = (settings.run_dir / "logs" / f"{web.name}.log").read_text()
    assert "exited with code -9; restarting in 0.2 s" in log
    assert "restarting (restart 1, after exit code -9)" in log
    assert "ready again" in log
    # Audited on the platform's chain, which still verifies; the other child was never restarted.
    events = [r for r in audit.tail(settings, 20) if r["event"] == "platform.restarted"]
    assert len(events) == 1, events
    detail = json.loads(events[0]["detail"])
    assert detail == {
        "service": web.name,
        "exit_code": -9,
        "restarts": 1,
        "in_a_row": 1,
        "pid": seen["new_pid"],
    }
    assert audit.verify(settings).ok
    # Everything stopped afterwards, the new process included.
    assert up.port_free("127.0.0.1", web.port or 0) and up.port_free("127.0.0.1", other.port or 0)
    assert not (settings.run_dir / "up.json").exists()


def test_a_child_that_keeps_crashing_stops_the_platform_with_its_log_tail(
    settings: Settings, tmp_path: Path
) -> None:
    # Alive long enough to count as started (ready_timeout_s), then it crashes.
    crasher = up.Service(
        name="crasher",
        argv=[
            sys.executable,
            "-c",
            "import sys, time; time.sleep(0.6); print('cannot reach the queue', flush=True); "
            "sys.exit(3)",
        ],
        description="crashes a moment after each start",
        ready_timeout_s=0.3,
    )
    web = _http_service(free_port(), stage=1)
    out = _Watch()
    started = time.monotonic()
    code = up.run(settings, [crasher, web], echo=out, restart=FAST)
    took = time.monotonic() - started
    text = out.text()
    assert code == 1, text
    # Restarted max_restarts times, then given up on: its log tail is in the output.
    assert text.count("restarted crasher") == FAST.max_restarts
    assert "it crashed 4 times in a row (restarted 3 times" in text
    assert "stopping everything" in text
    give_up = text[text.index("stopping everything") :]
    assert "cannot reach the queue" in give_up
    assert "exited with code 3" in text
    # The pause doubles, capped: 0.2, 0.4, 0.4.
    pauses = [
        line.split("restarting it in ")[1].split()[0]
        for line in out.lines
        if "restarting it in " in line
    ]
    assert pauses[:3] == ["0.2", "0.4", "0.4"], text
    # The rest was stopped too, and the crash loop is on the audit chain.
    assert up.port_free("127.0.0.1", web.port or 0)
    assert any(line.strip() == f"stopped {web.name} (exit -15)" for line in out.lines), text
    events = [r["event"] for r in audit.tail(settings, 20)]
    assert events.count("platform.restarted") == 3 and events[-1] == "platform.crash_loop"
    assert took < 30


def test_ctrl_c_during_the_pause_before_a_restart_stops_everything(settings: Settings) -> None:
    first, second = _http_service(free_port()), _http_service(free_port(), stage=1)
    slow = up.RestartPolicy(backoff_s=30.0, max_backoff_s=30.0)
    out = _Watch()
    ctrl_c_at: list[float] = []

    def on_ready(sup: up.Supervisor) -> None:
        os.kill(_state_pids(settings)[first.name], signal.SIGKILL)

    def on_line(line: str) -> None:
        if "restarting it in 30 s" in line and not ctrl_c_at:
            ctrl_c_at.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C, to this process

    out.hooks.append(on_line)
    assert up.run(settings, [first, second], on_ready=on_ready, echo=out, restart=slow) == 0
    stopped_in = time.monotonic() - ctrl_c_at[0]
    text = out.text()
    assert stopped_in < 10, (stopped_in, text)
    assert "restarted" not in text  # nothing started after Ctrl-C
    # In stage order, as without a restart pending: the live one, then the dead one.
    stopped = [line.strip().split()[1] for line in out.lines if line.strip().startswith("stopped")]
    assert stopped == [second.name, first.name], text
    assert up.port_free("127.0.0.1", first.port or 0) and up.port_free(
        "127.0.0.1", second.port or 0
    )
    assert not (settings.run_dir / "up.json").exists()


def test_a_restarted_child_counts_as_back_only_once_ready(
    settings: Settings, tmp_path: Path
) -> None:
    """The readiness check runs again; the other children keep answering meanwhile."""
    marker = tmp_path / "second-run"
    script = (
        "import pathlib, sys, time\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "if m.exists():\n"
        "    time.sleep(2.0)\n"
        "m.touch()\n"
        "print('queue consumer ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    consumer = up.Service(
        name="consumer",
        argv=[sys.executable, "-c", script],
        description="says when it is ready",
        ready_line="consumer ready",
        ready_timeout_s=30,
    )
    web = _http_service(free_port(), stage=1)
    out = _Watch()
    sup_box: list[up.Supervisor] = []
    during_wait: list[bool] = []
    times: dict[str, float] = {}

    def on_ready(sup: up.Supervisor) -> None:
        sup_box.append(sup)
        os.kill(_state_pids(settings)["consumer"], signal.SIGKILL)

    def on_line(line: str) -> None:
        if "restarted consumer" in line:
            times["restarted"] = time.monotonic()
        elif line.startswith("consumer is back"):
            times["back"] = time.monotonic()
            sup_box[0].stop_requested.set()

    def probe_web() -> None:
        while "back" not in times and not (sup_box and sup_box[0].stop_requested.is_set()):
            if "restarted" in times:
                during_wait.append(up.http_ok(web.health_url or ""))
            time.sleep(0.2)

    out.hooks.append(on_line)
    prober = threading.Thread(target=probe_web, daemon=True)
    prober.start()
    with _deadline(sup_box):
        code = up.run(settings, [consumer, web], on_ready=on_ready, echo=out, restart=FAST)
    prober.join(5)
    assert code == 0 and "back" in times, out.text()
    assert times["back"] - times["restarted"] >= 2.0
    assert during_wait and all(during_wait), during_wait


def test_a_restart_the_database_cannot_record_is_said_and_the_platform_runs_on(
    settings: Settings,
) -> None:
    unreachable = settings.model_copy(
        update={
            "audit": settings.audit.model_copy(
                update={"db_url": f"postgresql+psycopg://aipaas@127.0.0.1:{free_port()}/platform"}
            )
        }
    )
    web = _http_service(free_port())
    out = _Watch()
    sup_box: list[up.Supervisor] = []

    def on_ready(sup: up.Supervisor) -> None:
        sup_box.append(sup)
        os.kill(_state_pids(unreachable)[web.name], signal.SIGKILL)

    def on_line(line: str) -> None:
        if "could not audit platform.restarted" in line:
            sup_box[0].stop_requested.set()

    out.hooks.append(on_line)
    with _deadline(sup_box):
        code = up.run(unreachable, [web], on_ready=on_ready, echo=out, restart=FAST)
    text = out.text()
    assert code == 0, text
    line = next(x for x in out.lines if "could not audit" in x)
    assert f"platform.restarted of {web.name}" in line and "127.0.0.1" in line, line
    assert "aipaas@" not in line  # no credentials in the output
    assert f"restarted {web.name}" in text
    assert up.port_free("127.0.0.1", web.port or 0)


@pytest.mark.parametrize(("in_a_row", "pause"), [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (7, 30.0)])
def test_the_pause_before_a_restart_doubles_up_to_its_cap(in_a_row: int, pause: float) -> None:
    assert up.RestartPolicy().delay(in_a_row) == pause


JOIN_RAY = """
import ray
from aipaas.settings import get_settings
from aipaas.training.raycluster import ensure_ray
info = ensure_ray(get_settings().ray)
print("joined", info.address, "answer", ray.get(ray.remote(lambda: 40 + 2).remote()))
"""


@pytest.mark.slow
def test_the_ray_head_comes_back_on_its_port_and_a_driver_joins_it(settings: Settings) -> None:
    """The worker's ``AIPAAS_RAY__ADDRESS`` stays right after a restart: same port, same token."""
    s = Settings(_env_file=None, home=settings.home, ray={"num_cpus": 1})
    head = up.ray_head_service(s)
    worker_env = next(svc for svc in up.plan(s) if svc.name == "worker").env
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AIPAAS_RAY"))},
        **worker_env,
        "AIPAAS_RAY__ADDRESS": f"127.0.0.1:{head.port}",
    }
    out = _Watch()
    sup_box: list[up.Supervisor] = []
    joined: list[subprocess.CompletedProcess[str]] = []
    old: list[int] = []

    def on_ready(sup: up.Supervisor) -> None:
        sup_box.append(sup)
        old.append(sup.running[0].process.pid)
        os.kill(old[0], signal.SIGKILL)

    def on_line(line: str) -> None:
        if line.startswith("ray is back"):
            joined.append(
                subprocess.run(
                    [sys.executable, "-c", JOIN_RAY],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
            )
            sup_box[0].stop_requested.set()

    out.hooks.append(on_line)
    with _deadline(sup_box, 300):
        assert up.run(s, [head], on_ready=on_ready, echo=out, restart=FAST) == 0
    assert joined, out.text()
    assert joined[0].returncode == 0, joined[0].stdout + joined[0].stderr[-3000:]
    # Ray advertises the machine's address, not loopback; the port is the one in the plan.
    assert f":{head.port} answer 42" in joined[0].stdout
    assert "ray (pid" in out.text() and "exited with code -9" in out.text()
