"""The ``train`` flow on the Prefect harness, over a real DVC-recorded dataset version.

One flow run per module (a whole training: about 20 s of CPU) serves every
test that only looks at what it left: the registered challenger, the task
runs, the progress artifact and the trial lines in the flow run's log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aipaas.exceptions import ModelNotFoundError
from aipaas.settings import PROJECT_ROOT, Settings, get_settings
from aipaas.training import registry, tags
from tests.support.project import copy_project

pytestmark = pytest.mark.slow

STEPS = ["prepare data", "search", "refit", "evaluate", "log and register"]
PROGRESS_KEY = "train-progress-diagnosis"


def _base_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        "AIPAAS_HOME": str(home),
        "AIPAAS_MODELS_DIR": str(PROJECT_ROOT / "models"),
        "AIPAAS_MLFLOW__TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "AIPAAS_TUNE__NUM_SAMPLES": "2",
        "AIPAAS_TUNE__CV_FOLDS": "2",
    }


@dataclass(frozen=True)
class FlowRun:
    """What the module's one ``train_flow("diagnosis")`` run left."""

    settings: Settings
    state: Any  # prefect's State; its result is the TrainResult
    version_hash: str
    version_rows: int
    version_commit: str | None


@pytest.fixture(scope="module")
def flow_run(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness: None, ray_session: None
) -> Iterator[FlowRun]:
    """``train_flow("diagnosis")`` once, on a temp home and a private copy of the data project."""
    from aipaas.datasets.ingest import recorded_version
    from flows.train import train_flow

    root = tmp_path_factory.mktemp("train-flow")
    repo = copy_project(tmp_path_factory, root)
    env = _base_env(root / "home") | {
        "AIPAAS_DATA__DIR": str(repo / "data"),
        "AIPAAS_DATA__EXPECTATIONS_DIR": str(repo / "expectations"),
        "AIPAAS_VERSIONING__REPO": str(repo),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        try:
            settings = get_settings()
            version = recorded_version("breast_cancer", settings)
            state = train_flow("diagnosis", return_state=True)
        finally:
            get_settings.cache_clear()
    yield FlowRun(settings, state, version.hash, version.rows, version.git_commit)


@pytest.fixture
def bare_settings(
    tmp_path: Path, use_settings: Callable[..., Settings], prefect_harness: None
) -> Settings:
    """get_settings() on a temp home, no dataset: for flows that must fail early."""
    return use_settings(env=_base_env(tmp_path / "home"))


def _task_runs(flow_run_id: object) -> dict[str, str]:
    """Each task run of a flow run by name, with its final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name.rsplit("-", 1)[0]: r.state.type.value for r in runs if r.state}


def _artifact(key: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert len(found) == 1, found
    return found[0]


def test_train_flow_registers_a_challenger_step_by_step(flow_run: FlowRun) -> None:
    state = flow_run.state
    out = state.result()
    assert out.version == "1" and out.data_hash == flow_run.version_hash
    assert out.trials_ok == 2 and out.metrics[tags.holdout_metric("roc_auc")] > 0.95
    registry.connect(flow_run.settings)
    challenger = registry.get_alias("diagnosis", tags.CHALLENGER)
    assert challenger is not None and challenger.run_id == out.run_id
    assert challenger.tags[tags.DATA_ROWS] == str(flow_run.version_rows)
    assert challenger.tags[tags.GIT_COMMIT] == flow_run.version_commit
    assert challenger.tags[tags.TARGET] == "diagnosis"
    # Each named step is its own task in the Prefect UI, in order, all completed.
    tasks = _task_runs(state.state_details.flow_run_id)
    assert {step: tasks.get(step) for step in STEPS} == dict.fromkeys(STEPS, "COMPLETED")


def test_train_flow_publishes_its_progress_and_logs_each_trial(flow_run: FlowRun) -> None:
    """The progress artifact ends at 100 % on this run; each trial is a line in its log."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    state = flow_run.state
    assert state.is_completed(), state.message
    artifact = _artifact(PROGRESS_KEY)
    assert artifact.type == "progress" and float(artifact.data) == 100.0
    assert artifact.description.startswith("2/2 trials, best roc_auc 0.")
    assert artifact.flow_run_id == state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    messages = [log.message for log in logs]
    assert any(m.startswith("trial 1/2  roc_auc") for m in messages), messages
    assert any(m.startswith("trial 2/2  roc_auc") for m in messages), messages


def test_train_flow_fails_on_unknown_model(bare_settings: Settings) -> None:
    from flows.train import train_flow

    state = train_flow("nope", return_state=True)
    assert state.is_failed()
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        state.result()
