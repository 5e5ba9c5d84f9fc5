"""The lifecycle end to end on the demo model: data -> train -> promote, twice.

A private copy of the reproduced data project (``tests.data.project``), a temp
home with MLflow on SQLite, the session's Prefect harness and Ray. The first
run promotes the first model on its absolute gates; the second trains a new
challenger and compares it with the champion on the same current holdout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import promotion_log, registry, signals, tags
from tests.support.project import copy_project

pytestmark = pytest.mark.slow


@pytest.fixture
def flow_settings(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    use_settings: Callable[..., Settings],
    prefect_harness: None,
    ray_session: None,
) -> Settings:
    repo = copy_project(tmp_path_factory, tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "AIPAAS_HOME": str(home),
        "AIPAAS_MODELS_DIR": str(PROJECT_ROOT / "models"),
        "AIPAAS_MLFLOW__TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "AIPAAS_DATA__DIR": str(repo / "data"),
        "AIPAAS_DATA__EXPECTATIONS_DIR": str(repo / "expectations"),
        "AIPAAS_VERSIONING__REPO": str(repo),
        "AIPAAS_TUNE__NUM_SAMPLES": "2",
        "AIPAAS_TUNE__CV_FOLDS": "2",
    }
    return use_settings(env=env)


def test_lifecycle_promotes_the_demo_model_then_compares_the_next(
    flow_settings: Settings,
) -> None:
    from flows.lifecycle import lifecycle_flow

    first = lifecycle_flow("diagnosis")
    v1 = first.train.version
    assert first.promote.result == "promoted" and first.promote.version == v1
    assert first.dataset.suite_passed is True
    assert first.train.data_hash == first.dataset.hash
    registry.connect(flow_settings)
    champion = registry.get_alias("diagnosis", tags.CHAMPION)
    assert champion is not None and champion.version == v1
    assert champion.tags[tags.DATA_HASH] == first.dataset.hash
    assert signals.marker_mtime(flow_settings, "diagnosis") > 0
    gates = {g.name: g for g in first.promote.gates}
    assert gates["min roc_auc"].passed and gates["min roc_auc"].value > 0.95
    assert gates["data suite passed"].passed and gates["signature compatible"].passed

    second = lifecycle_flow("diagnosis")
    v2 = second.train.version
    assert v2 != v1
    result = second.promote
    # Same data, same seeds: the new challenger scores like the champion on the
    # same holdout, within the tolerance, and replaces it.
    assert result.result == "promoted", result
    vs = next(g for g in result.gates if g.name == "vs champion roc_auc")
    assert vs.passed and f"champion v{v1} scored" in vs.detail
    previous = registry.get_alias("diagnosis", tags.PREVIOUS_CHAMPION)
    assert previous is not None and previous.version == v1
    history = promotion_log.read(flow_settings, "diagnosis")
    assert [(r.version, r.result) for r in history] == [(v1, "promoted"), (v2, "promoted")]
