"""A worker started elsewhere takes the lifecycle from the work pool and completes it.

The Prefect and MLflow servers run as ``aipaas up`` starts them; the pool and
the deployments are registered as ``up`` registers them; the worker is
``aipaas worker``, a separate process started from a directory of its own
(not the checkout), as on a second machine that has the project installed.
It must find the flow code (module-path entrypoints of the installed
package), move into its project directory (the pull step), and run the whole
lifecycle of a private data project: DVC data version, Ray Tune search,
registration, promotion to champion, with the run's artifacts in Prefect.

The worker's model definitions require a person's approval (its own models
directory: ``diagnosis`` with ``Gates.require_approval``), so the promote
step pauses on the worker until the test answers as a reviewer in the UI
would; then the drift deployment is registered again on a one-minute cron,
and Prefect's scheduler creates runs the worker executes at their time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aipaas.ops import up
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import promotion_log, registry, tags
from flows._common import run_deployment_at
from tests.support.project import new_project, project_env
from tests.support.servers import CLI, cli_env, prefect_and_mlflow, server_settings

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

WORKER = "second-machine"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("pool") / "home"
    s = server_settings(home, tune={"num_samples": 2, "cv_folds": 2, "max_concurrent": 2})
    with prefect_and_mlflow(s):
        yield s


@pytest.fixture
def worker(servers: Settings, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``aipaas worker`` in a directory of its own; yields (its log, the data project)."""
    from flows.deployments import register

    register(servers)
    repo = new_project(tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    models = _models_requiring_approval(tmp_path / "models")
    env = cli_env(
        servers,
        **project_env(repo, servers.home),
        AIPAAS_TUNE__NUM_SAMPLES="2",
        AIPAAS_TUNE__CV_FOLDS="2",
        AIPAAS_TUNE__MAX_CONCURRENT="2",
        # This machine's project: where its flow runs work.
        AIPAAS_PROJECT_DIR=str(repo),
        AIPAAS_MODELS_DIR=str(models),
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*CLI, "worker", "--name", WORKER],
            cwd=elsewhere,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 90
            while not up.worker_online(servers, WORKER):
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
            yield log_path, repo
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _models_requiring_approval(models: Path) -> Path:
    """The project's model definitions, with ``diagnosis`` promoted only by a person."""
    shutil.copytree(PROJECT_ROOT / "models", models, ignore=shutil.ignore_patterns("__pycache__"))
    with (models / "diagnosis.py").open("a") as f:
        f.write(
            "\nimport dataclasses as _dc\n\n"
            "definition = _dc.replace(\n"
            "    definition, gates=_dc.replace(definition.gates, require_approval=True)\n"
            ")\n"
        )
    return models


def test_a_worker_elsewhere_runs_the_lifecycle(
    servers: Settings, worker: tuple[Path, Path]
) -> None:
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import temporary_settings

    from flows._common import prefect_settings

    log, repo = worker
    asked = time.monotonic()
    run = run_deployment_at(
        servers.prefect_api_url,
        "lifecycle/lifecycle",
        {"model": "diagnosis"},
        tags=("aipaas", "test"),
    )
    # The promote step pauses on the worker for a reviewer's answer.
    paused = _wait_for_run(servers, "promote", "PAUSED", timeout_s=480, log=log)
    registry.connect(servers)
    assert registry.get_alias("diagnosis", tags.CHAMPION) is None  # nothing before approval
    with temporary_settings(updates=prefect_settings(servers)):
        resume_flow_run(paused["id"], run_input={"approve": True, "reviewer": "erin"})
    done = _wait_for_run(servers, "lifecycle", "COMPLETED", timeout_s=120, log=log)
    took = time.monotonic() - asked
    assert done["id"] == str(run.id)
    print(f"lifecycle on the worker: {took:.0f} s from the request to Completed, approval included")
    assert done["work_pool_name"] == servers.prefect.work_pool
    assert str(run.id) in log.read_text()  # this worker, not another, ran it

    champion = registry.get_alias("diagnosis", tags.CHAMPION)
    assert champion is not None and champion.version == "1"
    [decision] = promotion_log.read(servers)
    assert decision.result == "promoted" and decision.approved_by == "erin"
    # The data version came from the worker's project, not the checkout.
    assert (repo / "dvc.lock").is_file()

    # Each step's artifact (validation report, training summary, gate table) is in Prefect.
    artifacts = up.prefect_api(servers, "/artifacts/filter", {}) or []
    keys = {a["key"] for a in artifacts}
    assert {"data-validation-breast-cancer", "train-diagnosis", "promotion-gates-diagnosis"} <= keys


def test_the_schedule_fires_on_the_worker(servers: Settings, worker: tuple[Path, Path]) -> None:
    """A drift run the scheduler created from the cron (not asked for) completes on the worker.

    Drift goes on a one-minute cron only now, with a champion to check: before
    it, every run would fail for want of one and load the machine.
    """
    from flows.deployments import register

    log, _ = worker
    register(servers.model_copy(update={"prefect": servers.prefect.model_copy(
        update={"drift_cron": "* * * * *"})}))  # fmt: skip
    run = _wait_for_run(servers, "drift", "COMPLETED", timeout_s=240, log=log, scheduled=True)
    assert run["work_pool_name"] == servers.prefect.work_pool
    assert run["id"] in log.read_text()


def _wait_for_run(
    servers: Settings,
    flow: str,
    state: str,
    *,
    timeout_s: float,
    log: Path,
    scheduled: bool = False,
) -> dict[str, object]:
    """The first run of ``flow`` in state ``state`` (with ``scheduled``: one the scheduler made)."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, object] = {
        "flows": {"name": {"any_": [flow]}},
        "flow_runs": {"state": {"type": {"any_": [state]}}},
    }
    if scheduled:  # the scheduler tags its runs; a run asked for through the API has none
        body["flow_runs"] |= {"tags": {"all_": ["auto-scheduled"]}}  # type: ignore[operator]
    while True:
        runs = up.prefect_api(servers, "/flow_runs/filter", body) or []
        if runs:
            return dict(runs[0])
        assert time.monotonic() < deadline, f"no {state} {flow} run:\n{log.read_text()[-5000:]}"
        time.sleep(1)
