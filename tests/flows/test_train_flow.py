"""The ``train`` flow on the Prefect harness, over a real DVC-recorded dataset version."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from aipaas.exceptions import ModelNotFoundError
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import registry, tags
from tests.support.project import copy_project

pytestmark = pytest.mark.slow

STEPS = ["prepare data", "search", "refit", "evaluate", "log and register"]


def _base_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        "AIPAAS_HOME": str(home),
        "AIPAAS_MODELS_DIR": str(PROJECT_ROOT / "models"),
        "AIPAAS_MLFLOW__TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "AIPAAS_TUNE__NUM_SAMPLES": "2",
        "AIPAAS_TUNE__CV_FOLDS": "2",
    }


@pytest.fixture
def flow_settings(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    use_settings: Callable[..., Settings],
    prefect_harness: None,
    ray_session: None,
) -> Settings:
    """get_settings() on a temp home and a private copy of a reproduced data project."""
    repo = copy_project(tmp_path_factory, tmp_path)
    env = _base_env(tmp_path / "home") | {
        "AIPAAS_DATA__DIR": str(repo / "data"),
        "AIPAAS_DATA__EXPECTATIONS_DIR": str(repo / "expectations"),
        "AIPAAS_VERSIONING__REPO": str(repo),
    }
    return use_settings(env=env)


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


def test_train_flow_registers_a_challenger_step_by_step(flow_settings: Settings) -> None:
    from aipaas.datasets.ingest import recorded_version
    from flows.train import train_flow

    version = recorded_version("breast_cancer", flow_settings)
    state = train_flow("diagnosis", return_state=True)
    out = state.result()
    assert out.version == "1" and out.data_hash == version.hash
    assert out.trials_ok == 2 and out.metrics[tags.holdout_metric("roc_auc")] > 0.95
    registry.connect(flow_settings)
    challenger = registry.get_alias("diagnosis", tags.CHALLENGER)
    assert challenger is not None and challenger.run_id == out.run_id
    assert challenger.tags[tags.DATA_ROWS] == str(version.rows)
    assert challenger.tags[tags.GIT_COMMIT] == version.git_commit
    assert challenger.tags[tags.TARGET] == "diagnosis"
    # Each named step is its own task in the Prefect UI, in order, all completed.
    tasks = _task_runs(state.state_details.flow_run_id)
    assert {step: tasks.get(step) for step in STEPS} == dict.fromkeys(STEPS, "COMPLETED")


def test_train_flow_fails_on_unknown_model(bare_settings: Settings) -> None:
    from flows.train import train_flow

    state = train_flow("nope", return_state=True)
    assert state.is_failed()
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        state.result()
