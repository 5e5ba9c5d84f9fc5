"""Killing the platform's Prefect worker with ``kill -9``: ``up`` restarts it, schedules go on.

``up``'s own supervisor runs the real Prefect server and the real worker
service (``aipaas worker --register`` on the work pool, as :func:`aipaas.ops.up.plan`
builds it), in the test's home on free loopback ports. A deployment of
:func:`tick` (below: the worker's flow runs import it from this module) on
the pool runs every few seconds on an interval schedule. The test sees a
scheduled run complete, kills the worker, sees the supervisor start it
again, and then sees scheduled runs complete on the new worker. A run
that was under way when the worker died cannot finish (its process dies
with the worker's session); what became of such runs is printed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from prefect import flow

from aipaas.ops import up
from aipaas.settings import PROJECT_ROOT, Settings
from tests.support.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

INTERVAL_S = 6
DEADLINE_S = 240  # the whole scenario; a loaded host is slow, a hung one fails here


@flow(name="tick", persist_result=False)
def tick() -> str:
    """The scheduled flow: nothing but a run the worker must start and finish."""
    return "tick"


def _settings(home: Any) -> Settings:
    return Settings(
        _env_file=None,
        home=home,
        prefect={"port": free_port(), "drift_cron": "", "lifecycle_cron": ""},
        mlflow={"port": free_port()},
    )


def _deploy(s: Settings) -> str:
    """``tick`` on the work pool every INTERVAL_S; returns the deployment id."""
    from prefect.deployments.runner import EntrypointType
    from prefect.settings import temporary_settings

    from flows._common import prefect_settings

    with temporary_settings(updates=prefect_settings(s)):
        deployment = tick.to_deployment(
            name="tick",
            interval=timedelta(seconds=INTERVAL_S),
            entrypoint_type=EntrypointType.MODULE_PATH,
            work_pool_name=s.prefect.work_pool,
        )
        return str(deployment.apply(work_pool_name=s.prefect.work_pool))


def _runs(s: Settings, deployment: str) -> list[dict[str, Any]]:
    body = {"deployments": {"id": {"any_": [deployment]}}, "sort": "EXPECTED_START_TIME_ASC"}
    return list(up.prefect_api(s, "/flow_runs/filter", body) or [])


def _completed(runs: list[dict[str, Any]], after: float = 0.0) -> list[dict[str, Any]]:
    """Runs completed whose schedule the scheduler made, started after ``after`` (epoch s)."""
    from datetime import datetime

    done = []
    for r in runs:
        if r["state_type"] != "COMPLETED" or "auto-scheduled" not in r["tags"]:
            continue
        if datetime.fromisoformat(r["start_time"]).timestamp() > after:
            done.append(r)
    return done


def _wait(what: str, check: Any, until: float) -> Any:
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < until, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_scheduled_runs_resume_after_the_worker_is_killed(tmp_path: Any) -> None:
    s = _settings(tmp_path / "home")
    worker = up.worker_service(s)
    # Its flow runs import this module; the registered platform flows keep no cron.
    worker.env.update(
        PYTHONPATH=str(PROJECT_ROOT),
        AIPAAS_PREFECT__DRIFT_CRON="",
        AIPAAS_PREFECT__LIFECYCLE_CRON="",
    )
    services = [up.prefect_service(s), worker]
    out: list[str] = []
    back = threading.Event()
    seen: dict[str, Any] = {}
    box: list[up.Supervisor] = []

    def echo(line: str) -> None:
        out.append(line)
        if line.startswith("worker is back"):
            back.set()

    def scenario() -> None:
        sup = box[0]
        until = time.monotonic() + DEADLINE_S
        try:
            deployment = _deploy(s)
            first = _wait(
                "a scheduled run to complete", lambda: _completed(_runs(s, deployment)), until
            )
            seen["first"] = first[0]["name"]
            [run] = [r for r in sup.running if r.service.name == "worker"]
            seen["old_pid"] = run.process.pid
            os.kill(run.process.pid, signal.SIGKILL)
            killed, seen["killed_at"] = time.time(), time.monotonic()
            _wait("the supervisor to say the worker is back", back.is_set, until)
            seen["back_s"] = time.monotonic() - seen["killed_at"]
            seen["new_pid"] = next(r for r in sup.running if r.service.name == "worker").process.pid
            after = _wait(
                "two scheduled runs to complete after the kill",
                lambda: (lambda d: d if len(d) >= 2 else None)(
                    _completed(_runs(s, deployment), after=killed)
                ),
                until,
            )
            seen["resumed_s"] = time.monotonic() - seen["killed_at"]
            seen["after"] = [r["name"] for r in after]
            seen["states"] = [(r["name"], r["state_name"]) for r in _runs(s, deployment)]
        except AssertionError as err:
            seen["error"] = str(err)
        finally:
            sup.stop_requested.set()

    def on_ready(sup: up.Supervisor) -> None:
        box.append(sup)
        threading.Thread(target=scenario, daemon=True).start()

    code = up.run(s, services, on_ready=on_ready, echo=echo)
    text = "\n".join(out)
    assert "error" not in seen, f"{seen.get('error')}\n{text}\n{_log_tail(s)}"
    assert code == 0, text
    assert seen["new_pid"] != seen["old_pid"]
    assert f"worker (pid {seen['old_pid']}) exited with code -9; restarting it" in text
    states = seen["states"]
    # Nothing the scheduler made waits to be taken: every run due before the last
    # completed one was taken by a worker (left Scheduled or Late, it would still
    # be SCHEDULED). A run under way when the worker died ends Crashed; one the
    # dead worker had only claimed stays Pending ("Submitting"): see the report.
    names = [n for n, _ in states]
    due = states[: names.index(seen["after"][-1]) + 1]
    print(
        f"worker back {seen['back_s']:.1f} s after kill -9; two scheduled runs completed on "
        f"the new worker {seen['resumed_s']:.1f} s after it; runs due by then: {due}"
    )
    assert not [st for _, st in due if st in ("Scheduled", "Late")], due


def _log_tail(s: Settings) -> str:
    return up.tail(s.run_dir / "logs" / "worker.log", 40)
