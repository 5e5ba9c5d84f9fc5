"""The train flow's progress artifact: created when the search starts, moved by each trial."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aipaas.progress import StageEvent, TrialEvent
from aipaas.settings import PROJECT_ROOT, Settings
from tests.support.project import copy_project

pytestmark = pytest.mark.slow
KEY = "train-progress-diagnosis"


def _artifact(key: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert len(found) == 1, found
    return found[0]


def test_the_artifact_moves_with_each_trial(prefect_harness: None) -> None:
    from prefect import flow

    from flows.train import ArtifactProgress

    seen: list[tuple[float, str]] = []

    @flow(name="progress-artifact-test")
    def follow() -> None:
        progress = ArtifactProgress("progress-artifact-test")
        progress.on_stage(StageEvent("search", "started", detail="2 trials"))
        a = _artifact("progress-artifact-test")
        seen.append((float(a.data), a.description))
        for done, best in ((1, 0.91), (2, 0.95)):
            progress.on_trial(TrialEvent(done, 2, best, f"t{done}", True, best, metric="auc"))
            a = _artifact("progress-artifact-test")
            seen.append((float(a.data), a.description))

    follow()
    assert seen == [
        (0.0, "search started: 2 trials"),
        (50.0, "1/2 trials, best auc 0.9100"),
        (100.0, "2/2 trials, best auc 0.9500"),
    ]


def test_train_flow_publishes_its_progress_and_logs_each_trial(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    use_settings: Callable[..., Settings],
    prefect_harness: None,
    ray_session: None,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.train import train_flow

    repo = copy_project(tmp_path_factory, tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    use_settings(
        env={
            "AIPAAS_HOME": str(home),
            "AIPAAS_MODELS_DIR": str(PROJECT_ROOT / "models"),
            "AIPAAS_MLFLOW__TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "AIPAAS_TUNE__NUM_SAMPLES": "2",
            "AIPAAS_TUNE__CV_FOLDS": "2",
            "AIPAAS_DATA__DIR": str(repo / "data"),
            "AIPAAS_DATA__EXPECTATIONS_DIR": str(repo / "expectations"),
            "AIPAAS_VERSIONING__REPO": str(repo),
        }
    )
    state = train_flow("diagnosis", return_state=True)
    assert state.is_completed(), state.message
    artifact = _artifact(KEY)
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
