"""The runner registers every deployment with its schedule, and runs what the API asks.

The runner is the real one ``aipaas up`` starts (``python -m flows.deployments``),
a separate process talking to the session's Prefect harness server.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import registry, tags
from tests.support.registry import MODEL, register_tiny, tiny_settings

pytestmark = pytest.mark.slow

FLOWS = {
    "data": "flows.data",
    "train": "flows.train",
    "promote": "flows.promote",
    "lifecycle": "flows.lifecycle",
    "drift": "flows.drift",
    "retrain": "flows.retrain",
}


def test_runner_serves_deployments_with_schedules_and_runs_one(
    settings: Settings, tmp_path: Path, prefect_harness: None
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    s = tiny_settings(settings, tmp_path)
    v1 = register_tiny(s)
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "AIPAAS_HOME": str(s.home),
        "AIPAAS_MODELS_DIR": str(s.models_dir),
        "AIPAAS_MLFLOW__TRACKING_URI": s.mlflow_tracking_uri,
        "AIPAAS_SERVING__DEFAULT_MODEL": MODEL,
        "AIPAAS_PREFECT__LIFECYCLE_CRON": "0 3 * * *",
        "AIPAAS_PREFECT__DRIFT_CRON": "*/5 * * * *",
    }
    log = (tmp_path / "runner.log").open("wb")
    runner = subprocess.Popen(
        [sys.executable, "-m", "flows.deployments"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    expected = {name for name, module in FLOWS.items() if importlib.util.find_spec(module)}
    assert {"promote", "lifecycle", "data"} <= expected
    try:
        found: dict[str, object] = {}
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline and set(found) != expected:
                assert runner.poll() is None, (tmp_path / "runner.log").read_text()[-3000:]
                found = {d.name: d for d in client.read_deployments() if d.name in expected}
                time.sleep(1)
        assert set(found) == expected, (tmp_path / "runner.log").read_text()[-3000:]
        crons = {
            name: [sch.schedule.cron for sch in d.schedules]  # type: ignore[attr-defined]
            for name, d in found.items()
        }
        assert crons["lifecycle"] == ["0 3 * * *"]
        assert crons["promote"] == [] and crons["data"] == []
        if "drift" in crons:
            assert crons["drift"] == ["*/5 * * * *"]
        assert found["promote"].parameters == {"model": MODEL}  # type: ignore[attr-defined]

        run = run_deployment(
            "promote/promote", parameters={"model": MODEL}, timeout=180, poll_interval=1
        )
        assert run.state is not None and run.state.is_completed(), (
            run.state,
            (tmp_path / "runner.log").read_text()[-3000:],
        )
        registry.connect(s)
        champion = registry.get_alias(MODEL, tags.CHAMPION)
        assert champion is not None and champion.version == v1
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        try:
            runner.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait(10)
        log.close()
