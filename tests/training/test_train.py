"""Training end to end on a real local Ray and a real MLflow store (SQLite in tmp)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aipaas.exceptions import TrainingError
from aipaas.modeldef import ModelDefinition, load_definition
from aipaas.schemas import DatasetVersion
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import registry, tags
from aipaas.training.evaluate import score_version
from aipaas.training.train import TrainResult, lineage, train_model

pytestmark = pytest.mark.slow


def breast_cancer_version(
    where: Path, train_rows: int = 240, holdout_rows: int = 120
) -> DatasetVersion:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer(as_frame=True)
    df = d.data.rename(columns=lambda c: c.replace(" ", "_"))
    df["diagnosis"] = np.where(d.target == 0, "malignant", "benign")
    df = df.sample(frac=1.0, random_state=1)
    where.mkdir(parents=True, exist_ok=True)
    df.iloc[:train_rows].to_csv(where / "train.csv", index=False)
    df.iloc[train_rows : train_rows + holdout_rows].to_csv(where / "holdout.csv", index=False)
    return DatasetVersion(
        name="breast_cancer",
        hash="feedc0de" * 4,
        rows=train_rows + holdout_rows,
        suite_passed=True,
        train_path=where / "train.csv",
        holdout_path=where / "holdout.csv",
        target="diagnosis",
        git_commit="abc1234",
    )


def make_settings(home: Path, **tune: Any) -> Settings:
    home.mkdir(parents=True, exist_ok=True)
    return Settings(
        _env_file=None,
        home=home,
        mlflow={"tracking_uri": f"sqlite:///{home / 'mlflow.db'}"},
        tune={"num_samples": 2, "max_concurrent": 2, "cv_folds": 2, **tune},
    )


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, ray_session: None
) -> Iterator[tuple[Settings, TrainResult, DatasetVersion]]:
    root = tmp_path_factory.mktemp("train")
    settings = make_settings(root / "home")
    version = breast_cancer_version(root / "data")
    definition = load_definition("diagnosis", PROJECT_ROOT / "models")
    result = train_model(definition, version, settings)
    yield settings, result, version


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def test_registers_a_challenger_with_metrics_and_lineage(trained) -> None:
    settings, result, version = trained
    registry.connect(settings)
    assert result.version == "1" and result.trials_ok == 2 and result.trials_failed == 0
    assert registry.get_alias("diagnosis", tags.CHALLENGER).version == "1"
    mv = registry.get_version("diagnosis", 1)
    assert mv.run_id == result.run_id
    assert mv.tags[tags.DATA_HASH] == version.hash
    assert mv.tags[tags.SUITE_PASSED] == "true"
    assert mv.tags[tags.GIT_COMMIT] == "abc1234"
    assert mv.tags[tags.DATASET] == "breast_cancer"
    metrics = registry.run_metrics(result.run_id)
    assert metrics["holdout_roc_auc"] > 0.95 and metrics["holdout_accuracy"] > 0.9
    for key in ("holdout_f1", "latency_p50_ms", "latency_p99_ms", "latency_batch_p99_ms"):
        assert key in metrics
    assert 0 < metrics["latency_p99_ms"] < 50
    run = _client().get_run(result.run_id)
    assert set(result.best_params) <= set(run.data.params)
    assert run.data.params["setting.tune.num_samples"] == "2"
    info = lineage("diagnosis", "1", settings)
    assert info["dvc_hash"] == version.hash and info["run_id"] == result.run_id


def test_trials_are_nested_runs(trained) -> None:
    import mlflow

    settings, result, _ = trained
    registry.connect(settings)
    children = mlflow.search_runs(
        experiment_names=[settings.mlflow.experiment],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    )
    assert len(children) == 2
    assert set(children["status"]) == {"FINISHED"}
    assert children["metrics.cv_roc_auc"].notna().all()


def test_artifacts_report_profile_and_model(trained, tmp_path: Path) -> None:
    import mlflow

    settings, result, _ = trained
    registry.connect(settings)
    names = {a.path for a in _client().list_artifacts(result.run_id, "evaluation")}
    for name in (
        "report.md",
        "report.html",
        "roc.png",
        "pr.png",
        "confusion_matrix.png",
        "per_class.csv",
    ):
        assert f"evaluation/{name}" in names
    profile = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="reference_profile/profile.bin", dst_path=str(tmp_path)
    )
    from aipaas.datasets.profiles import read_profile

    assert read_profile(Path(profile)) is not None
    schema = registry.input_schema(result.model_uri)
    assert schema is not None and len(schema) == 30
    assert set(schema.values()) == {"double"}


def test_model_loads_back_and_scores_the_same(trained) -> None:
    import mlflow

    settings, result, version = trained
    registry.connect(settings)
    holdout = pd.read_csv(version.holdout_path)
    X = holdout.drop(columns=["diagnosis"]).astype("float64")
    pyfunc = mlflow.pyfunc.load_model(result.model_uri)
    assert set(pyfunc.predict(X.head(5))) <= {"malignant", "benign"}
    native = mlflow.lightgbm.load_model(result.model_uri)
    assert list(native.classes_) == ["benign", "malignant"]
    assert native.predict_proba(X.head(3)).shape == (3, 2)
    definition = load_definition("diagnosis", PROJECT_ROOT / "models")
    scores = score_version(result.model_uri, definition, holdout)
    assert scores["roc_auc"] == pytest.approx(result.metrics["holdout_roc_auc"])
    assert scores["accuracy"] == pytest.approx(result.metrics["holdout_accuracy"])


def test_lineage_cli(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from aipaas.cli import app
    from aipaas.settings import get_settings

    settings, result, version = trained
    monkeypatch.setenv("AIPAAS_HOME", str(settings.home))
    monkeypatch.setenv("AIPAAS_MLFLOW__TRACKING_URI", settings.mlflow_tracking_uri)
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["models", "lineage", "diagnosis", "1", "--json"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)
    assert info["dataset"] == "breast_cancer"
    assert info["dvc_hash"] == version.hash
    assert info["suite_passed"] == "true"
    assert info["run_id"] == result.run_id
    assert info["git_commit"] == "abc1234"


LOGREG_MODEL = """
from aipaas.modeldef import Choice, LogUniform, ModelDefinition
from pathlib import Path
import importlib.util

# The demo's features and target, a scikit-learn estimator, and the space under test.
_spec = importlib.util.spec_from_file_location("_diag", {diag!r})
_diag = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_diag)


def build(params):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=200, **params))


definition = ModelDefinition(
    name="diagnosis",
    dataset="breast_cancer",
    target="diagnosis",
    features=_diag.FEATURES,
    build_estimator=build,
    search_space={space},
)
"""


def logreg_definition(tmp_path: Path, space: str) -> ModelDefinition:
    # Loaded from a file, as users' definitions are: Ray ships its functions by value.
    models = tmp_path / "models"
    models.mkdir()
    diag = str(PROJECT_ROOT / "models" / "diagnosis.py")
    (models / "diagnosis.py").write_text(LOGREG_MODEL.format(diag=diag, space=space))
    return load_definition("diagnosis", models)


def test_a_crashing_trial_is_reported_and_the_search_goes_on(
    tmp_path: Path, ray_session: None
) -> None:
    import mlflow

    settings = make_settings(tmp_path / "home", num_samples=6, seed=3)
    # C must be positive: the trials that draw -1.0 raise inside fit().
    definition = logreg_definition(tmp_path, '{"C": Choice((1.0, -1.0))}')
    result = train_model(definition, breast_cancer_version(tmp_path / "data", 120, 60), settings)
    assert result.trials_failed >= 1 and result.trials_ok >= 1
    assert result.trials_ok + result.trials_failed == 6
    assert result.best_params == {"C": 1.0}
    children = mlflow.search_runs(
        experiment_names=[settings.mlflow.experiment],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    )
    failed = children[children["status"] == "FAILED"]
    assert len(failed) == result.trials_failed
    assert failed["tags.aipaas.error"].str.contains("C").all()
    assert registry.get_alias("diagnosis", tags.CHALLENGER).version == result.version


def test_all_trials_failing_registers_nothing(tmp_path: Path, ray_session: None) -> None:
    settings = make_settings(tmp_path / "home")
    definition = logreg_definition(
        tmp_path, '{"C": LogUniform(1e-3, 1.0), "penalty": Choice(("bogus",))}'
    )
    with pytest.raises(TrainingError, match="all 2 trials .* failed, nothing was registered"):
        train_model(definition, breast_cancer_version(tmp_path / "data", 120, 60), settings)
    registry.connect(settings)
    assert registry.list_versions("diagnosis") == []


TEXT_MODEL = """
from aipaas.modeldef import LogUniform, ModelDefinition


def build(params):
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline([
        ("tfidf", ColumnTransformer([("text", TfidfVectorizer(), "text")])),
        ("clf", LogisticRegression(max_iter=300, **params)),
    ])


definition = ModelDefinition(
    name="sentiment",
    dataset="reviews",
    target="label",
    features=("text",),
    build_estimator=build,
    search_space={"C": LogUniform(0.1, 10.0)},
    metric="roc_auc",
)
"""


def test_text_model_gets_a_one_string_column_signature(tmp_path: Path, ray_session: None) -> None:
    import mlflow

    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "sentiment.py").write_text(TEXT_MODEL)
    definition: ModelDefinition = load_definition("sentiment", models_dir)
    rng = np.random.default_rng(0)
    good = ["great", "lovely", "excellent", "superb", "happy"]
    bad = ["awful", "terrible", "broken", "sad", "poor"]
    filler = ["the", "product", "was", "really", "quite", "very", "delivery"]
    rows = []
    for i in range(120):
        label = "positive" if i % 2 else "negative"
        words = list(rng.choice(filler, 5)) + list(rng.choice(good if i % 2 else bad, 2))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    df = pd.DataFrame(rows)
    data = tmp_path / "data"
    data.mkdir()
    df.iloc[:80].to_csv(data / "train.csv", index=False)
    df.iloc[80:].to_csv(data / "holdout.csv", index=False)
    version = DatasetVersion(
        "reviews", "t3xt", 120, True, data / "train.csv", data / "holdout.csv", "label"
    )
    settings = make_settings(tmp_path / "home")
    result = train_model(definition, version, settings)
    assert result.metrics["holdout_accuracy"] > 0.9
    assert registry.input_schema(result.model_uri) == {"text": "string"}
    model = mlflow.pyfunc.load_model(result.model_uri)
    got = model.predict(
        pd.DataFrame({"text": ["lovely excellent product", "awful broken delivery"]})
    )
    assert list(got) == ["positive", "negative"]
    assert os.path.basename(mlflow.artifacts.download_artifacts(f"{result.model_uri}/model.skops"))
