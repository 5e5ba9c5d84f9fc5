"""The runner registers every deployment with its schedule, and runs what the API asks.

The runner is the real one ``aipaas up`` starts (``python -m flows.deployments``),
a separate process talking to the session's Prefect harness server; the run is
asked for the way ``aipaas up`` and ``aipaas demo`` ask (``run_deployment_at``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import registry, tags
from flows._common import run_deployment_at
from tests.conftest import settings_env
from tests.support.registry import MODEL, register_tiny, tiny_settings

pytestmark = pytest.mark.slow

# Every flow is a deployment named after it; lifecycle and drift carry the crons set below.
EXPECTED_CRONS = {
    "data": [],
    "train": [],
    "promote": [],
    "lifecycle": ["0 3 * * *"],
    "drift": ["*/5 * * * *"],
    "retrain": [],
}


@pytest.fixture
def runner(settings: Settings, tmp_path: Path, prefect_harness: None) -> Iterator[Path]:
    """``python -m flows.deployments`` on the harness server; yields its log file."""
    from prefect.settings import PREFECT_API_URL

    s = tiny_settings(settings, tmp_path)
    env = {
        **os.environ,
        **settings_env(s),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        # Prefect's runner looks for new runs every 10 s by default.
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "AIPAAS_SERVING__DEFAULT_MODEL": MODEL,
        "AIPAAS_PREFECT__LIFECYCLE_CRON": EXPECTED_CRONS["lifecycle"][0],
        "AIPAAS_PREFECT__DRIFT_CRON": EXPECTED_CRONS["drift"][0],
    }
    log_path = tmp_path / "runner.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.deployments"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield log_path
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _registered(log: Path, names: set[str], timeout_s: float = 120) -> dict[str, Any]:
    """The deployments named ``names`` once all are visible in the API."""
    from prefect.client.orchestration import get_client

    found: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while set(found) != names and time.monotonic() < deadline:
            found = {d.name: d for d in client.read_deployments() if d.name in names}
            time.sleep(0.2)
    assert set(found) == names, log.read_text()[-3000:]
    return found


def test_runner_serves_every_deployment_with_its_schedule(
    settings: Settings, tmp_path: Path, runner: Path
) -> None:
    found = _registered(runner, set(EXPECTED_CRONS))
    crons = {name: [sch.schedule.cron for sch in d.schedules] for name, d in found.items()}
    assert crons == EXPECTED_CRONS
    assert found["data"].parameters == {}
    for name in EXPECTED_CRONS.keys() - {"data"}:
        assert found[name].parameters == {"model": MODEL}, name
    assert all("aipaas" in d.tags for d in found.values())

    # A run asked through the API is executed by the runner: the promote flow
    # moves the champion alias to the registered challenger.
    s = tiny_settings(settings, tmp_path)
    v1 = register_tiny(s)
    run = run_deployment_at(
        None, "promote/promote", {"model": MODEL}, wait_s=180, poll_s=0.5, tags=("aipaas", "test")
    )
    assert run.state is not None and run.state.is_completed(), (
        run.state,
        runner.read_text()[-3000:],
    )
    assert {"aipaas", "test"} <= set(run.tags)
    registry.connect(s)
    champion = registry.get_alias(MODEL, tags.CHAMPION)
    assert champion is not None and champion.version == v1
