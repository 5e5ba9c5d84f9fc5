"""The ``train`` flow on the Prefect harness, over a real DVC-recorded dataset version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aipaas.exceptions import ModelNotFoundError
from aipaas.settings import PROJECT_ROOT, Settings, get_settings
from aipaas.training import registry, tags
from tests.support.project import copy_project

pytestmark = pytest.mark.slow


def _use(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    return get_settings()


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
    monkeypatch: pytest.MonkeyPatch,
    prefect_harness: None,
    ray_session: None,
) -> Iterator[Settings]:
    """get_settings() on a temp home and a private copy of a reproduced data project."""
    repo = copy_project(tmp_path_factory, tmp_path)
    env = _base_env(tmp_path / "home") | {
        "AIPAAS_DATA__DIR": str(repo / "data"),
        "AIPAAS_DATA__EXPECTATIONS_DIR": str(repo / "expectations"),
        "AIPAAS_VERSIONING__REPO": str(repo),
    }
    yield _use(env, monkeypatch)
    get_settings.cache_clear()


@pytest.fixture
def bare_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> Iterator[Settings]:
    """get_settings() on a temp home, no dataset: for flows that must fail early."""
    yield _use(_base_env(tmp_path / "home"), monkeypatch)
    get_settings.cache_clear()


def test_train_flow_registers_a_challenger(flow_settings: Settings) -> None:
    from aipaas.datasets.ingest import recorded_version
    from flows.train import train_flow

    version = recorded_version("breast_cancer", flow_settings)
    out = train_flow("diagnosis")
    assert out["version"] == "1" and out["data_hash"] == version.hash
    assert out["trials_ok"] == 2 and out["metrics"]["holdout_roc_auc"] > 0.95
    registry.connect(flow_settings)
    challenger = registry.get_alias("diagnosis", tags.CHALLENGER)
    assert challenger is not None and challenger.run_id == out["run_id"]
    assert challenger.tags[tags.DATA_ROWS] == str(version.rows)
    assert challenger.tags[tags.GIT_COMMIT] == version.git_commit


def test_train_flow_fails_on_unknown_model(bare_settings: Settings) -> None:
    from flows.train import train_flow

    state = train_flow("nope", return_state=True)
    assert state.is_failed()
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        state.result()
