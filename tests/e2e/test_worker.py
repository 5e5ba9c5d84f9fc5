"""A worker started elsewhere takes the lifecycle from the work pool and completes it.

The Prefect and MLflow servers run as ``aipaas up`` starts them; the pool and
the deployments are registered as ``up`` registers them; the worker is
``aipaas worker``, a separate process started from a directory of its own
(not the checkout), as on a second machine that has the project installed.
It must find the flow code (module-path entrypoints of the installed
package), move into its project directory (the pull step), and run the whole
lifecycle of a private data project: DVC data version, Ray Tune search,
registration, promotion to champion, with the run's artifacts in Prefect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aipaas.ops import up
from aipaas.settings import Settings
from aipaas.training import registry, tags
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
    env = cli_env(
        servers,
        **project_env(repo, servers.home),
        AIPAAS_TUNE__NUM_SAMPLES="2",
        AIPAAS_TUNE__CV_FOLDS="2",
        AIPAAS_TUNE__MAX_CONCURRENT="2",
        # This machine's project: where its flow runs work.
        AIPAAS_PROJECT_DIR=str(repo),
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


def test_a_worker_elsewhere_runs_the_lifecycle(
    servers: Settings, worker: tuple[Path, Path]
) -> None:
    log, repo = worker
    asked = time.monotonic()
    run = run_deployment_at(
        servers.prefect_api_url,
        "lifecycle/lifecycle",
        {"model": "diagnosis"},
        wait_s=480,  # the lifecycle takes 2.5-4 min here, longer on a busy machine
        poll_s=1,
        tags=("aipaas", "test"),
    )
    took = time.monotonic() - asked
    assert run.state is not None and run.state.is_completed(), (run.state, log.read_text()[-5000:])
    print(f"lifecycle on the worker: {took:.0f} s from the request to Completed")
    assert run.work_pool_name == servers.prefect.work_pool
    assert str(run.id) in log.read_text()  # this worker, not another, ran it

    registry.connect(servers)
    champion = registry.get_alias("diagnosis", tags.CHAMPION)
    assert champion is not None and champion.version == "1"
    # The data version came from the worker's project, not the checkout.
    assert (repo / "dvc.lock").is_file()

    # Each step's artifact (validation report, training summary, gate table) is in Prefect.
    artifacts = up.prefect_api(servers, "/artifacts/filter", {}) or []
    keys = {a["key"] for a in artifacts}
    assert {"data-validation-breast-cancer", "train-diagnosis", "promotion-gates-diagnosis"} <= keys
