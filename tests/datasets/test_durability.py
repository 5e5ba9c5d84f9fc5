"""Labelled data is never lost: a model's dataset version is rebuilt from the DVC remote alone.

Real git + DVC projects, a real local DVC remote, a real MLflow store (SQLite)
and a real local Ray. One project trains on a version that includes exported
feedback; a second checkout holding only what a fresh clone holds restores it
from the remote; then the feedback files are deleted from the first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from aipaas.datasets import ingest
from aipaas.exceptions import DatasetNotFoundError
from aipaas.modeldef import load_definition
from aipaas.monitoring import retrain
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import registry, tags
from aipaas.training.train import recorded_data, train_model
from tests.support.project import copy_project, new_project, project_env

pytestmark = pytest.mark.slow

DIAGNOSIS = load_definition("diagnosis", PROJECT_ROOT / "models")
FEEDBACK_ROWS = 30
# The hash of breast_cancer as dvc.lock records it in the repository: the same
# data must keep it, whatever changed in the code that versions it. (Changed
# once, on purpose, when the split became a function of each row's content.)
BREAST_CANCER_HASH = "85c7f81f9d764a19d9c2a728ab2c92d2"


def _settings(repo: Path, home: Path, remote: Path, mlflow_db: Path) -> Settings:
    return Settings(
        _env_file=None,
        home=home,
        data={"dir": repo / "data", "expectations_dir": repo / "expectations"},
        versioning={"repo": repo, "remote_url": str(remote)},
        mlflow={"tracking_uri": f"sqlite:///{mlflow_db}"},
        tune={"num_samples": 2, "max_concurrent": 2, "cv_folds": 2},
    )


def _labelled(repo: Path):  # type: ignore[no-untyped-def]
    """What serving's feedback table would hand the retrain: labelled rows with inputs."""
    rows = pd.read_csv(repo / "data/breast_cancer/raw.csv").tail(FEEDBACK_ROWS).copy()
    rows["labelled_at"] = pd.Timestamp("2026-01-01", tz="UTC")

    def labelled_rows(settings: Settings, model: str, **_: object) -> pd.DataFrame:
        return rows

    return labelled_rows


def test_a_models_data_survives_deletion_and_restores_on_a_fresh_checkout(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, ray_session: None
) -> None:
    remote, mlflow_db = tmp_path / "remote", tmp_path / "mlflow.db"
    repo_a = copy_project(tmp_path_factory, tmp_path / "a")
    home_a = tmp_path / "a" / "home"
    home_a.mkdir()
    a = _settings(repo_a, home_a, remote, mlflow_db)
    base_rows = len(pd.read_csv(repo_a / "data/breast_cancer/raw.csv"))
    assert ingest.recorded_version("breast_cancer", a).hash == BREAST_CANCER_HASH

    # A retrain exports feedback; the data run versions and pushes it; a model trains on it.
    exported = retrain.export_feedback(a, DIAGNOSIS, labelled_rows=_labelled(repo_a))
    assert exported.rows == FEEDBACK_ROWS and exported.path is not None
    feedback = exported.path.read_bytes()
    version = ingest.run_data_pipeline("breast_cancer", a)
    assert version.rows == base_rows + FEEDBACK_ROWS
    trained = train_model(DIAGNOSIS, version, a)
    assert trained.data_hash == version.hash
    registry.connect(a)
    mv = registry.get_version("diagnosis", trained.version)
    assert mv.tags[tags.DATA_HASH] == version.hash
    lock = json.loads(mv.tags[tags.DATA_LOCK])
    assert (
        ingest.dataset_hash(
            *(
                {o["path"]: o["md5"] for o in lock["split@breast_cancer"]["outs"]}[f]
                for f in ("data/breast_cancer/train.csv", "data/breast_cancer/holdout.csv")
            )
        )
        == version.hash
    )
    assert recorded_data("diagnosis", trained.version, a).data_hash == version.hash

    # A second machine: a fresh clone (no data, no dvc.lock, no cache), the same
    # remote and registry. `aipaas data restore` rebuilds exactly that version.
    repo_b = new_project(tmp_path / "b")
    assert not (repo_b / "dvc.lock").exists()
    home_b = tmp_path / "b" / "home"
    env = {
        **os.environ,
        **project_env(repo_b, home_b),
        "AIPAAS_VERSIONING__REMOTE_URL": str(remote),
        "AIPAAS_MLFLOW__TRACKING_URI": f"sqlite:///{mlflow_db}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    aipaas = str(Path(sys.executable).parent / "aipaas")
    cli = subprocess.run(
        [aipaas, "data", "restore", "breast_cancer", "--model", "diagnosis"]
        + ["--model-version", trained.version, "--json"],
        cwd=repo_b,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert json.loads(cli.stdout)["hash"] == version.hash
    b = _settings(repo_b, home_b, remote, mlflow_db)
    restored = ingest.recorded_version("breast_cancer", b)
    assert (restored.hash, restored.rows) == (version.hash, base_rows + FEEDBACK_ROWS)
    assert (repo_b / "data/incoming/breast_cancer" / exported.path.name).read_bytes() == feedback
    # Nothing is left to rerun: the restored checkout is that version.
    ingest.reproduce("breast_cancer", b)
    assert ingest.recorded_version("breast_cancer", b).hash == version.hash

    # The feedback files deleted from the first checkout come back at the next ingest.
    exported.path.unlink()
    ingest.reproduce("breast_cancer", a)
    assert exported.path.read_bytes() == feedback
    again = ingest.recorded_version("breast_cancer", a)
    assert (again.hash, again.rows) == (version.hash, base_rows + FEEDBACK_ROWS)

    # Deleted where neither the cache nor the remote has them: the ingest refuses.
    exported.path.unlink()
    shutil.rmtree(repo_a / ".dvc" / "cache")
    shutil.rmtree(remote)
    with pytest.raises(DatasetNotFoundError) as err:
        ingest.reproduce("breast_cancer", a)
    message = str(err.value)
    assert "1 labelled file(s)" in message and "data/incoming/breast_cancer" in message
    assert "would drop those rows" in message
    assert len(pd.read_csv(repo_a / "data/breast_cancer/raw.csv")) == base_rows + FEEDBACK_ROWS
