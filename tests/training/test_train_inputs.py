"""Bad input to training: each a clear error, before any search, nothing registered."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aipaas.exceptions import (
    ConfigurationError,
    DatasetNotFoundError,
    DataValidationError,
    ModelNotFoundError,
    RegistryUnavailableError,
)
from aipaas.modeldef import Choice, IntRange, load_definition
from aipaas.schemas import DatasetVersion
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import registry
from aipaas.training.train import train, train_model
from tests.support.net import free_port


def _version(tmp_path: Path, *, suite_passed: bool = True) -> DatasetVersion:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer(as_frame=True)
    df = d.data.rename(columns=lambda c: c.replace(" ", "_"))
    df["diagnosis"] = np.where(d.target == 0, "malignant", "benign")
    df.iloc[:60].to_csv(tmp_path / "train.csv", index=False)
    df.iloc[60:90].to_csv(tmp_path / "holdout.csv", index=False)
    return DatasetVersion(
        name="breast_cancer",
        hash="0123abcd",
        rows=90,
        suite_passed=suite_passed,
        train_path=tmp_path / "train.csv",
        holdout_path=tmp_path / "holdout.csv",
        target="diagnosis",
    )


def _nothing_logged(settings: Settings) -> None:
    import mlflow

    registry.connect(settings)
    assert registry.list_versions("diagnosis") == []
    exp = mlflow.get_experiment_by_name(settings.mlflow.experiment)
    if exp is not None:
        assert mlflow.search_runs([exp.experiment_id]).empty


@pytest.fixture
def diagnosis():
    return load_definition("diagnosis", PROJECT_ROOT / "models")


def test_unknown_model(settings: Settings) -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'.*diagnosis"):
        train("nope", settings)


def test_dataset_never_versioned(settings: Settings, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    s = settings.model_copy(
        update={
            "versioning": settings.versioning.model_copy(update={"repo": repo}),
            "data": settings.data.model_copy(update={"dir": repo / "data"}),
        }
    )
    with pytest.raises(DatasetNotFoundError, match="aipaas data run breast_cancer"):
        train("diagnosis", s)
    _nothing_logged(s)


def test_failed_suite_is_refused(settings: Settings, tmp_path: Path, diagnosis) -> None:
    with pytest.raises(DataValidationError, match="failed its validation suite"):
        train_model(diagnosis, _version(tmp_path, suite_passed=False), settings)
    _nothing_logged(settings)


def test_missing_split_file(settings: Settings, tmp_path: Path, diagnosis) -> None:
    version = _version(tmp_path)
    version.holdout_path.unlink()
    with pytest.raises(DatasetNotFoundError, match="holdout.csv is missing"):
        train_model(diagnosis, version, settings)
    _nothing_logged(settings)


def test_invalid_search_space(settings: Settings, tmp_path: Path, diagnosis) -> None:
    bad = dataclasses.replace(
        diagnosis, search_space={"num_leaves": IntRange(31, 4), "boosting": Choice(())}
    )
    with pytest.raises(ConfigurationError, match="invalid search space"):
        train_model(bad, _version(tmp_path), settings)
    _nothing_logged(settings)


def test_features_missing_from_data(settings: Settings, tmp_path: Path, diagnosis) -> None:
    bad = dataclasses.replace(diagnosis, features=(*diagnosis.features, "age"))
    with pytest.raises(ConfigurationError, match=r"needs columns \['age'\]"):
        train_model(bad, _version(tmp_path), settings)
    _nothing_logged(settings)


def test_mlflow_unreachable_fails_fast(settings: Settings, tmp_path: Path, diagnosis) -> None:
    port = free_port()  # closed: nothing listens there
    s = settings.model_copy(
        update={
            "mlflow": settings.mlflow.model_copy(
                update={"tracking_uri": f"http://127.0.0.1:{port}"}
            )
        }
    )
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match=f"127.0.0.1:{port}.*aipaas mlflow"):
        train_model(diagnosis, _version(tmp_path), s)
    assert time.monotonic() - t0 < 30
    assert pd.read_csv(tmp_path / "train.csv").shape[0] == 60  # data untouched


def test_cli_unknown_model_exits_with_its_code(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "AIPAAS_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", "from aipaas.cli import main; main()", "train", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == ModelNotFoundError.exit_code
    assert "unknown model 'nope'" in proc.stderr and "Traceback" not in proc.stderr
