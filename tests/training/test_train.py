"""Training: its named steps, the refusals before any search, and whole runs.

The refusals and the pure helpers run without Ray or MLflow; the whole runs
(marked slow) use a real local Ray and a real MLflow store (SQLite in tmp).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aipaas.exceptions import (
    ConfigurationError,
    DatasetNotFoundError,
    DataValidationError,
    ModelNotFoundError,
    RegistryUnavailableError,
    TrainingError,
)
from aipaas.modeldef import Choice, IntRange, ModelDefinition, load_definition
from aipaas.schemas import DatasetVersion
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import registry, tags
from aipaas.training.evaluate import score_version
from aipaas.training.raycluster import RayInfo
from aipaas.training.train import (
    TrainResult,
    check_inputs,
    fit,
    lineage,
    prepare_data,
    read_split,
    refit,
    run_tags,
    serving_tags,
    settings_params,
    train,
    train_model,
)
from aipaas.training.tune import SearchResult
from tests.support.net import free_port

DIAGNOSIS = load_definition("diagnosis", PROJECT_ROOT / "models")


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


# --- refusals: each a clear error, before any search, nothing logged -------------


def small_version(where: Path, *, suite_passed: bool = True) -> DatasetVersion:
    return dataclasses.replace(
        breast_cancer_version(where, 60, 30), hash="0123abcd", suite_passed=suite_passed
    )


def nothing_logged(settings: Settings) -> None:
    import mlflow

    registry.connect(settings)
    assert registry.list_versions("diagnosis") == []
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_an_unknown_model_names_the_known_ones(settings: Settings) -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'.*diagnosis"):
        load_definition("nope", PROJECT_ROOT / "models")


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
        train(DIAGNOSIS, s)
    nothing_logged(s)


def test_failed_suite_is_refused(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="failed its validation suite"):
        train_model(DIAGNOSIS, small_version(tmp_path, suite_passed=False), settings)
    nothing_logged(settings)


def test_missing_split_file(settings: Settings, tmp_path: Path) -> None:
    version = small_version(tmp_path)
    version.holdout_path.unlink()
    with pytest.raises(DatasetNotFoundError, match="holdout.csv is missing"):
        train_model(DIAGNOSIS, version, settings)
    nothing_logged(settings)


def test_invalid_search_space(settings: Settings, tmp_path: Path) -> None:
    bad = dataclasses.replace(
        DIAGNOSIS, search_space={"num_leaves": IntRange(31, 4), "boosting": Choice(())}
    )
    with pytest.raises(ConfigurationError, match="invalid search space"):
        train_model(bad, small_version(tmp_path), settings)
    nothing_logged(settings)


def test_features_missing_from_data(settings: Settings, tmp_path: Path) -> None:
    bad = dataclasses.replace(DIAGNOSIS, features=(*DIAGNOSIS.features, "age"))
    with pytest.raises(ConfigurationError, match=r"needs columns \['age'\]"):
        train_model(bad, small_version(tmp_path), settings)
    nothing_logged(settings)


def test_mlflow_unreachable_fails_fast(settings: Settings, tmp_path: Path) -> None:
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
        train_model(DIAGNOSIS, small_version(tmp_path), s)
    assert time.monotonic() - t0 < 30
    assert pd.read_csv(tmp_path / "train.csv").shape[0] == 60  # data untouched


def test_cli_unknown_model_exits_with_its_code(tmp_path: Path) -> None:
    import os

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


# --- the steps' parts, on plain values ------------------------------------------


def test_check_inputs_refuses_another_dataset(tmp_path: Path) -> None:
    other = dataclasses.replace(small_version(tmp_path), name="reviews")
    with pytest.raises(
        ConfigurationError, match="trains on dataset 'breast_cancer', not 'reviews'"
    ):
        check_inputs(DIAGNOSIS, other)
    check_inputs(DIAGNOSIS, small_version(tmp_path))  # a good version passes


def test_read_split_refuses_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    pd.DataFrame(columns=[*DIAGNOSIS.features, DIAGNOSIS.target]).to_csv(path, index=False)
    with pytest.raises(DatasetNotFoundError, match="has no rows"):
        read_split(path, DIAGNOSIS)


def test_lineage_tags_fall_back_to_the_code_commit(tmp_path: Path) -> None:
    ray = RayInfo(address="", nodes=2, cpus=4.0, joined_cluster=True)
    version = dataclasses.replace(small_version(tmp_path), git_commit=None)
    got = run_tags(DIAGNOSIS, version, ray, "c0ffee")
    assert got == {
        tags.DATASET: "breast_cancer",
        tags.DATA_HASH: "0123abcd",
        tags.DATA_ROWS: "90",
        tags.SUITE_PASSED: "true",
        tags.GIT_COMMIT: "c0ffee",
        tags.MODEL_DEFINITION: "diagnosis",
        tags.CODE_COMMIT: "c0ffee",
        tags.RAY_NODES: "2",
    }
    assert run_tags(DIAGNOSIS, version, ray, None)[tags.GIT_COMMIT] == "unknown"


def test_serving_tags_say_what_serving_needs_of_the_definition() -> None:
    assert serving_tags(DIAGNOSIS) == {tags.TARGET: "diagnosis", tags.LOG_INPUTS: "true"}
    private = dataclasses.replace(DIAGNOSIS, target="label", log_inputs=False)
    assert serving_tags(private) == {tags.TARGET: "label", tags.LOG_INPUTS: "false"}


def test_settings_params_record_the_search_and_the_cluster(settings: Settings) -> None:
    params = settings_params(settings, RayInfo("", nodes=3, cpus=6.0, joined_cluster=True))
    assert params["setting.tune.num_samples"] == 2
    assert params["setting.ray.address"] == "local"
    assert (params["setting.ray.nodes"], params["setting.ray.cpus"]) == (3, 6.0)


def test_fit_turns_a_bad_configuration_into_a_training_error() -> None:
    X = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]})
    y = pd.Series(["no", "no", "yes", "yes"])
    logreg = logreg_like()
    assert list(fit(logreg, {"C": 1.0}, X, y).predict(X)) == list(y)
    with pytest.raises(TrainingError, match="refit of the best configuration"):
        fit(logreg, {"C": -1.0}, X, y)


def logreg_like() -> ModelDefinition:
    from sklearn.linear_model import LogisticRegression

    return dataclasses.replace(DIAGNOSIS, build_estimator=lambda p: LogisticRegression(**p))


# --- whole trainings (Ray, MLflow) ---------------------------------------------


@pytest.mark.slow
def test_a_failing_step_marks_the_parent_run_failed(
    settings: Settings, tmp_path: Path, ray_session: None
) -> None:
    import mlflow

    data = prepare_data(logreg_like(), small_version(tmp_path), settings)
    run = mlflow.get_run(data.run_id)
    assert run.data.tags[tags.DATA_HASH] == "0123abcd"
    assert run.data.params["setting.tune.cv_folds"] == "2"
    assert tags.step_seconds("ray_init") in run.data.metrics
    bad = SearchResult(best_config={"C": -1.0}, best_score=0.9)
    with pytest.raises(TrainingError):
        refit(logreg_like(), data, bad)
    assert mlflow.get_run(data.run_id).info.status == "FAILED"
    assert registry.list_versions("diagnosis") == []


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, ray_session: None
) -> Iterator[tuple[Settings, TrainResult, DatasetVersion]]:
    root = tmp_path_factory.mktemp("train")
    settings = make_settings(root / "home")
    version = breast_cancer_version(root / "data")
    result = train_model(DIAGNOSIS, version, settings)
    yield settings, result, version


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


@pytest.mark.slow
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
    # What serving reads instead of models/diagnosis.py:
    assert mv.tags[tags.TARGET] == "diagnosis" and mv.tags[tags.LOG_INPUTS] == "true"
    metrics = registry.run_metrics(result.run_id)
    assert metrics["holdout_roc_auc"] > 0.95 and metrics["holdout_accuracy"] > 0.9
    for key in ("holdout_f1", "latency_p50_ms", "latency_p99_ms", "latency_batch_p99_ms"):
        assert key in metrics
    assert 0 < metrics["latency_p99_ms"] < 50
    run = _client().get_run(result.run_id)
    assert set(result.best_params) <= set(run.data.params)
    assert run.data.params["setting.tune.num_samples"] == "2"
    assert run.info.status == "FINISHED"
    assert result.metrics == metrics  # what every step logged to the one parent run
    assert set(result.seconds) == {"ray_init_s", "search_s", "refit_s", "evaluate_s"}
    info = lineage("diagnosis", "1", settings)
    assert info["dvc_hash"] == version.hash and info["run_id"] == result.run_id


@pytest.mark.slow
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


@pytest.mark.slow
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
        "feature_importance.png",
        "per_class.csv",
    ):
        assert f"evaluation/{name}" in names
    profile = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="reference_profile/profile.bin", dst_path=str(tmp_path)
    )
    from aipaas.datasets.profiles import read_profile

    reference = read_profile(Path(profile))
    assert reference.num_rows == 240
    assert {*DIAGNOSIS.features, "diagnosis"} <= set(reference.columns)
    schema = registry.input_schema(result.model_uri)
    assert schema is not None and len(schema) == 30
    assert set(schema.values()) == {"double"}


@pytest.mark.slow
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
    scores = score_version(result.model_uri, DIAGNOSIS, holdout)
    assert scores["roc_auc"] == pytest.approx(result.metrics["holdout_roc_auc"])
    assert scores["accuracy"] == pytest.approx(result.metrics["holdout_accuracy"])


@pytest.mark.slow
def test_lineage_cli(trained, use_settings: Callable[..., Settings]) -> None:
    from typer.testing import CliRunner

    from aipaas.cli import app

    settings, result, version = trained
    use_settings(settings)
    out = CliRunner().invoke(app, ["models", "lineage", "diagnosis", "1", "--json"])
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


@pytest.mark.slow
def test_a_crashing_trial_is_reported_and_the_search_goes_on(
    tmp_path: Path, ray_session: None
) -> None:
    import mlflow

    # One trial at a time; with seed 3 the first draws C=-1.0 and crashes, the
    # second draws 1.0 and must still run and win.
    settings = make_settings(tmp_path / "home", num_samples=2, max_concurrent=1, seed=3)
    # C must be positive: the trials that draw -1.0 raise inside fit().
    definition = logreg_definition(tmp_path, '{"C": Choice((1.0, -1.0))}')
    result = train_model(definition, breast_cancer_version(tmp_path / "data", 120, 60), settings)
    assert result.trials_failed >= 1 and result.trials_ok >= 1
    assert result.trials_ok + result.trials_failed == 2
    assert result.best_params == {"C": 1.0}
    children = mlflow.search_runs(
        experiment_names=[settings.mlflow.experiment],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    )
    failed = children[children["status"] == "FAILED"]
    assert len(failed) == result.trials_failed
    assert failed["tags.aipaas.error"].str.contains("C").all()
    assert registry.get_alias("diagnosis", tags.CHALLENGER).version == result.version


@pytest.mark.slow
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


@pytest.mark.slow
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
    skops = mlflow.artifacts.download_artifacts(f"{result.model_uri}/model.skops")
    assert Path(skops).stat().st_size > 0  # skops, never pickle
