"""Closed windows -> drift runs, coalesced: at most one queued and one running per model.

Against the session's Prefect harness server with the platform's real
deployments registered (as ``aipaas up`` registers them): the trigger's own
runner creates real runs of ``drift/drift`` and its own query reads them back.
No worker polls the test pool, so a run stays scheduled until the test moves
it on, as a worker would: pending, running, completed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from uuid import UUID

import pytest

from aipaas.monitoring.spool import WindowInfo
from aipaas.settings import Settings
from flows.triggers import DeploymentTrigger, DriftRuns, active_drift_runs, pending_path
from tests.conftest import make_settings
from tests.flows.test_deployments import EXPECTED_CRONS
from tests.support.net import free_port
from tests.support.registry import MODEL

pytestmark = pytest.mark.slow

UNFINISHED = {"SCHEDULED", "PENDING", "RUNNING", "CANCELLING"}


@pytest.fixture(scope="module")
def drift_deployment(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The platform's deployments, registered exactly as tests/flows/test_deployments.py does."""
    from prefect.settings import PREFECT_API_URL

    from flows.deployments import register

    s = make_settings(tmp_path_factory.mktemp("register"))
    prefect = s.prefect.model_copy(
        update={
            "api_url": str(PREFECT_API_URL.value()),
            "work_pool": "aipaas-test",
            "lifecycle_cron": EXPECTED_CRONS["lifecycle"][0],
            "drift_cron": EXPECTED_CRONS["drift"][0],
        }
    )
    serving = s.serving.model_copy(update={"default_model": MODEL})
    assert "drift" in register(s.model_copy(update={"prefect": prefect, "serving": serving}))


@pytest.fixture
def models(drift_deployment: None) -> Iterator[tuple[str, str]]:
    """Two model names no other test uses (runs stay on the session's server)."""
    tag = uuid.uuid4().hex[:8]
    yield f"coalesce-{tag}-a", f"coalesce-{tag}-b"


def _window(model: str, seq: int) -> WindowInfo:
    now = time.time()
    return WindowInfo(model, "1", seq, 500, now - 1, now, "rows", f"/nowhere/window-{seq}.bin")


def _runs(model: str) -> list:
    """Every run of drift/drift for ``model``, whatever its state, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowFilter,
        FlowFilterName,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["drift"])),
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["drift"])),
            limit=200,  # the server's maximum; a test makes a few
        )
    found = [r for r in runs if r.parameters.get("model") == model]
    return sorted(found, key=lambda r: r.created)


def _unfinished(model: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in _runs(model):
        if run.state_type.value in UNFINISHED:
            counts[run.state_type.value] = counts.get(run.state_type.value, 0) + 1
    return counts


def _move(run_id: UUID, state: str) -> None:
    """What a worker does to a run: pending, running, completed."""
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Pending, Running

    new = {"pending": Pending, "running": Running, "completed": Completed}[state]()
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, new, force=True)


def _trigger(settings: Settings, now: list[float]) -> DeploymentTrigger:
    # The production runner and query; only the clock is the test's.
    return DeploymentTrigger(settings, clock=lambda: now[0], base_backoff_s=5.0, recheck_s=5.0)


def test_twenty_windows_closed_quickly_queue_one_run_per_model(
    settings: Settings, models: tuple[str, str]
) -> None:
    a, b = models
    trigger = _trigger(settings, [1000.0])
    spent = 0.0
    for seq in range(1, 21):
        started = time.perf_counter()
        trigger.window_closed(_window(a, seq))
        trigger.window_closed(_window(b, seq))
        spent += time.perf_counter() - started
        # However many windows have closed, one run per model waits, none more.
        assert _unfinished(a) == {"SCHEDULED": 1}
        assert _unfinished(b) == {"SCHEDULED": 1}
    per_window_ms = spent / 40 * 1000

    assert len(_runs(a)) == len(_runs(b)) == 1  # the models are independent
    (run,) = _runs(a)
    assert run.idempotency_key == f"drift-{a}-1-1" and "window-closed" in run.tags
    assert trigger.pending() == {}
    stats = trigger.stats()
    assert (stats[a].windows, stats[a].runs, stats[a].coalesced) == (20, 1, 19)
    assert (stats[b].windows, stats[b].runs, stats[b].coalesced) == (20, 1, 19)
    # The counts are on disk for an operator (and the next profiler).
    again = DeploymentTrigger(settings, clock=lambda: 1000.0)
    assert again.stats()[a].coalesced == 19
    assert per_window_ms < 2000, per_window_ms  # a query and at most one create each
    print(f"trigger: {per_window_ms:.0f} ms per closed window (query + create or drop)")


def test_a_running_run_holds_the_next_until_it_ends(
    settings: Settings, models: tuple[str, str]
) -> None:
    a, b = models
    now = [1000.0]
    trigger = _trigger(settings, now)
    trigger.window_closed(_window(a, 1))
    (first,) = _runs(a)
    _move(first.id, "pending")  # a worker took it: it has not read the windows yet
    trigger.window_closed(_window(a, 2))
    assert len(_runs(a)) == 1 and trigger.pending() == {}  # covered by the pending run

    _move(first.id, "running")  # it may have read the windows: the next ones need a run
    for seq in range(3, 13):
        trigger.window_closed(_window(a, seq))
        assert _unfinished(a) == {"RUNNING": 1}  # nothing queued beside a running run
    waiting = trigger.pending()[a]
    assert waiting["waiting"] == "running" and waiting["windows"] == 10
    assert waiting["window"]["seq"] == 12 and waiting["error"] is None
    # The other model is not held by this one's run.
    trigger.window_closed(_window(b, 1))
    assert _unfinished(b) == {"SCHEDULED": 1}

    _move(first.id, "completed")
    trigger.tick()  # the recheck is not due yet
    assert _unfinished(a) == {}
    now[0] += 5.0
    trigger.tick()
    assert _unfinished(a) == {"SCHEDULED": 1} and trigger.pending() == {}
    second = _runs(a)[-1]
    assert second.idempotency_key == f"drift-{a}-1-12"  # asked for by the newest window
    s = trigger.stats()[a]
    assert (s.windows, s.runs, s.coalesced) == (12, 2, 10)
    assert s.windows == s.runs + s.coalesced + len(trigger.pending())


def test_prefect_unreachable_waits_in_the_file_and_a_restarted_trigger_sends_it(
    settings: Settings, models: tuple[str, str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    a, _ = models
    now = [1000.0]
    dead = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings(updates={PREFECT_API_URL: dead}):
        trigger = _trigger(settings, now)
        trigger.window_closed(_window(a, 1))
        trigger.window_closed(_window(a, 2))  # joins the waiting request, keeps its backoff
    entry = trigger.pending()[a]
    assert entry["attempts"] == 1 and entry["waiting"] == "unreachable"
    assert "ConnectError" in entry["error"] and entry["windows"] == 2
    assert pending_path(settings).is_file()
    assert _runs(a) == []

    # The profiler restarts; Prefect is back; the retry is due after the backoff.
    restarted = _trigger(settings, now)
    restarted.tick()
    assert _runs(a) == []
    now[0] += 6.0
    restarted.tick()
    (run,) = _runs(a)
    assert run.idempotency_key == f"drift-{a}-1-2"
    assert restarted.pending() == {}
    s = restarted.stats()[a]
    assert (s.windows, s.runs, s.coalesced) == (2, 1, 1)


def test_the_query_counts_due_runs_and_skips_future_and_stale_ones(
    models: tuple[str, str],
) -> None:
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    a, b = models
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("drift/drift")
        later = datetime.now(UTC) + timedelta(hours=1)
        client.create_flow_run_from_deployment(
            deployment.id, parameters={"model": a}, state=Scheduled(scheduled_time=later)
        )
    # A cron run an hour away is not queued work yet.
    assert active_drift_runs(a) == DriftRuns(queued=0, running=0)
    assert active_drift_runs(a, due_within_s=2 * 3600) == DriftRuns(queued=1, running=0)
    assert active_drift_runs(b, due_within_s=2 * 3600) == DriftRuns(0, 0)  # a's run, not b's


def test_a_stale_running_run_no_longer_holds_requests(models: tuple[str, str]) -> None:
    _, b = models
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("drift/drift")
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"model": b})
    _move(run.id, "running")
    assert active_drift_runs(b) == DriftRuns(queued=0, running=1)
    # A worker killed under its run leaves it RUNNING for ever.
    assert active_drift_runs(b, stale_after_s=0.0) == DriftRuns(queued=0, running=0)
