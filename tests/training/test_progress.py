"""Progress people can watch: stages and trials as events, trials in MLflow as they finish.

The pure parts (formatting, the stage context, concurrency, feature
importance, the plots of each task) run without servers; the whole trainings
(marked slow) use the session's Ray and a real MLflow store in tmp.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aipaas.modeldef import LogUniform, ModelDefinition, load_definition
from aipaas.progress import (
    Recorder,
    StageEvent,
    TrialEvent,
    format_stage,
    format_trial,
    stage,
)
from aipaas.schemas import DatasetVersion
from aipaas.settings import PROJECT_ROOT, Settings
from aipaas.training import plots, tags
from aipaas.training.evaluate import (
    feature_importance,
    holdout_evaluation,
    write_report,
)
from aipaas.training.latency import Latency
from aipaas.training.train import STAGES, train_model
from aipaas.training.tune import effective_concurrency

TOPIC = load_definition("topic", PROJECT_ROOT / "models")
DIAGNOSIS = load_definition("diagnosis", PROJECT_ROOT / "models")
LATENCY = Latency(1.0, 2.0, 3.0, 4.0, 100)


# --- the protocol, on plain values ----------------------------------------------


def test_stage_reports_start_then_finish_with_its_time() -> None:
    rec = Recorder()
    with stage(rec, "search", "8 trials"):
        pass
    assert [(e.stage, e.status) for e in rec.stages] == [
        ("search", "started"),
        ("search", "finished"),
    ]
    assert rec.stages[1].elapsed_s >= 0.0
    assert format_stage(rec.stages[0]) == "search (8 trials) ..."
    assert format_stage(rec.stages[1]).startswith("search (8 trials) finished in ")


def test_a_failing_stage_is_reported_failed_and_the_error_goes_on() -> None:
    rec = Recorder()
    with pytest.raises(ValueError, match="boom"), stage(rec, "refit"):
        raise ValueError("boom")
    assert [e.status for e in rec.stages] == ["started", "failed"]


def test_trial_lines_say_done_of_total_and_the_best_so_far() -> None:
    ok = TrialEvent(3, 12, 0.9712, "t3", True, 0.95, 1.25, metric="roc_auc")
    assert format_trial(ok) == "trial  3/12  roc_auc 0.9500 in 1.2 s  (best 0.9712)"
    bad = TrialEvent(1, 2, None, "t1", False, error="ValueError: C must be > 0\nmore")
    assert format_trial(bad) == "trial 1/2  FAILED: ValueError: C must be > 0  (no score yet)"


@pytest.mark.parametrize(
    ("requested", "cpus", "expected"), [(0, 2.0, 2), (2, 2.0, 2), (8, 2.0, 2), (1, 4.0, 1)]
)
def test_concurrency_follows_the_cpus_ray_sees(requested: int, cpus: float, expected: int) -> None:
    assert effective_concurrency(requested, cpus) == expected


# --- plots and importance, on small fitted models --------------------------------


def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes().startswith(b"\x89PNG")


def _texts(n: int, seed: int = 0) -> pd.DataFrame:
    words = {
        "computers": ["kernel", "compiler", "bug", "unix", "program"],
        "people": ["friend", "mother", "love", "child", "life"],
        "politics": ["vote", "senate", "law", "power", "party"],
        "science": ["atom", "theory", "physics", "energy", "experiment"],
    }
    filler = ["the", "a", "is", "of", "and", "never", "always"]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        topic = list(words)[i % 4]
        tokens = list(rng.choice(filler, 4)) + list(rng.choice(words[topic], 3))
        rng.shuffle(tokens)
        rows.append({"text": " ".join(tokens), "topic": topic})
    return pd.DataFrame(rows)


def test_multiclass_report_draws_one_vs_rest_curves_and_top_tokens(tmp_path: Path) -> None:
    from aipaas.training.metrics import predict_outputs, prepare_features

    df = _texts(120)
    model = TOPIC.build_estimator({})
    X = prepare_features(TOPIC, df)
    model.fit(X, df["topic"])
    pred, proba, classes = predict_outputs(model, X)
    ev = holdout_evaluation(TOPIC, df["topic"].to_numpy(), pred, proba, classes)
    importance = feature_importance(model, TOPIC.features)
    top = {name for name, _ in sorted(importance, key=lambda kv: -kv[1])[:20]}
    assert {"kernel", "senate", "atom", "mother"} <= top  # tokens, not "text__kernel"
    write_report(ev, LATENCY, tmp_path, title="topic", importance=importance)
    for name in (plots.ROC, plots.PR, plots.CONFUSION, plots.IMPORTANCE):
        assert _png(tmp_path / name), name
    assert f"![{plots.ROC}]({plots.ROC})" in (tmp_path / "report.md").read_text()


def test_regression_report_draws_residuals_and_predicted_vs_actual(tmp_path: Path) -> None:
    definition = _ridge_definition(tmp_path)
    df = _diabetes()
    model = definition.build_estimator({"alpha": 1.0}).fit(df[list(definition.features)], df["y"])
    pred = model.predict(df[list(definition.features)])
    ev = holdout_evaluation(definition, df["y"].to_numpy(), pred, None, [])
    importance = feature_importance(model, definition.features)
    assert {n for n, _ in importance} == set(definition.features)
    write_report(ev, LATENCY, tmp_path / "out", title="r", importance=importance)
    drawn = {p.name for p in (tmp_path / "out").glob("*.png")}
    assert drawn == {plots.RESIDUALS, plots.PREDICTED_VS_ACTUAL, plots.IMPORTANCE}


def test_a_model_without_weights_has_no_importance() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=1).fit([[0.0], [1.0]], ["a", "b"])
    assert feature_importance(knn, ("x",)) == []


def test_tree_importances_are_named_by_feature() -> None:
    df = _breast_cancer()
    model = DIAGNOSIS.build_estimator({"n_estimators": 10})
    model.fit(df[list(DIAGNOSIS.features)], df["diagnosis"])
    got = dict(feature_importance(model, DIAGNOSIS.features))
    assert set(got) == set(DIAGNOSIS.features) and sum(got.values()) > 0


# --- whole trainings: live trials, stages, plots in MLflow -----------------------


def _breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer(as_frame=True)
    df = d.data.rename(columns=lambda c: c.replace(" ", "_"))
    df["diagnosis"] = np.where(d.target == 0, "malignant", "benign")
    return df.sample(frac=1.0, random_state=1)


def _diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    d = load_diabetes(as_frame=True)
    df = d.data.copy()
    df["y"] = d.target
    return df


RIDGE_MODEL = """
from aipaas.modeldef import LogUniform, ModelDefinition


def build(params):
    from sklearn.linear_model import Ridge
    return Ridge(**params)


definition = ModelDefinition(
    name="progression",
    dataset="diabetes",
    target="y",
    features=("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"),
    build_estimator=build,
    search_space={"alpha": LogUniform(0.01, 10.0)},
    task="regression",
    metric="rmse",
    mode="min",
    metrics=("rmse", "mae", "r2"),
)
"""


def _ridge_definition(tmp_path: Path) -> ModelDefinition:
    # Loaded from a file, as users' definitions are: Ray ships its functions by value.
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / "progression.py").write_text(RIDGE_MODEL)
    return load_definition("progression", models)


def _version(where: Path, df: pd.DataFrame, name: str, target: str, split: int) -> DatasetVersion:
    where.mkdir(parents=True, exist_ok=True)
    df.iloc[:split].to_csv(where / "train.csv", index=False)
    df.iloc[split:].to_csv(where / "holdout.csv", index=False)
    return DatasetVersion(
        name, "5eed" * 8, len(df), True, where / "train.csv", where / "holdout.csv", target
    )


def _settings(home: Path, **tune: Any) -> Settings:
    home.mkdir(parents=True, exist_ok=True)
    return Settings(
        _env_file=None,
        home=home,
        mlflow={"tracking_uri": f"sqlite:///{home / 'mlflow.db'}"},
        tune={"num_samples": 2, "max_concurrent": 2, "cv_folds": 2, **tune},
    )


class NestedRunsSeen(Recorder):
    """Records events, and how many trial runs MLflow holds as each trial finishes."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def on_trial(self, event: TrialEvent) -> None:
        import mlflow

        runs = mlflow.search_runs(search_all_experiments=True)
        nested = runs[runs["tags.mlflow.parentRunId"].notna()] if len(runs) else runs
        self.seen.append(len(nested))
        super().on_trial(event)


def _children(settings: Settings, run_id: str) -> pd.DataFrame:
    import mlflow

    return mlflow.search_runs(
        experiment_names=[settings.mlflow.experiment],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
    )


def _artifacts(run_id: str) -> set[str]:
    from mlflow import MlflowClient

    return {a.path for a in MlflowClient().list_artifacts(run_id, tags.EVALUATION_ARTIFACT)}


@pytest.mark.slow
def test_multiclass_training_reports_every_trial_live_and_logs_its_plots(
    tmp_path: Path, ray_session: None
) -> None:
    # One trial at a time: when trial k ends, trials k+1.. have not.
    settings = _settings(tmp_path / "home", num_samples=3, max_concurrent=1)
    definition = dataclasses.replace(TOPIC, search_space={"C": LogUniform(0.5, 20.0)})
    version = _version(tmp_path / "data", _texts(200), "quotes", "topic", 140)
    rec = NestedRunsSeen()
    result = train_model(definition, version, settings, rec)

    # Stages in order, each started then finished, and every trial in between.
    assert [(e.stage, e.status) for e in rec.stages] == [
        (s, status) for s in STAGES for status in ("started", "finished")
    ]
    trials = rec.trials
    assert [(t.done, t.total) for t in trials] == [(1, 3), (2, 3), (3, 3)]
    assert all(t.ok and t.score is not None for t in trials)
    assert trials[-1].best == max(t.score or 0.0 for t in trials)
    search_started = rec.events.index(rec.stages[2])
    search_ended = rec.events.index(rec.stages[3])
    assert all(search_started < rec.events.index(t) < search_ended for t in trials)

    # Each trial was in MLflow the moment it finished, not after the search.
    assert rec.seen == [1, 2, 3]
    children = _children(settings, result.run_id)
    assert len(children) == 3 and set(children["status"]) == {"FINISHED"}
    assert children["metrics.cv_f1"].notna().all()
    assert children["params.C"].notna().all()
    assert set(children["tags.aipaas.trial_id"]) == {t.trial_id for t in trials}

    names = _artifacts(result.run_id)
    for name in (plots.ROC, plots.PR, plots.CONFUSION, plots.IMPORTANCE):
        assert f"{tags.EVALUATION_ARTIFACT}/{name}" in names


@pytest.mark.slow
def test_regression_training_logs_residual_plots(tmp_path: Path, ray_session: None) -> None:
    settings = _settings(tmp_path / "home")
    definition = _ridge_definition(tmp_path)
    version = _version(tmp_path / "data", _diabetes(), "diabetes", "y", 300)
    rec = Recorder()
    result = train_model(definition, version, settings, rec)
    assert len(rec.trials) == 2 and rec.trials[-1].best == min(t.score or 0 for t in rec.trials)
    names = _artifacts(result.run_id)
    for name in (plots.RESIDUALS, plots.PREDICTED_VS_ACTUAL, plots.IMPORTANCE):
        assert f"{tags.EVALUATION_ARTIFACT}/{name}" in names
    assert f"{tags.EVALUATION_ARTIFACT}/{plots.ROC}" not in names
    assert len(_children(settings, result.run_id)) == 2


def test_stage_events_are_plain_values() -> None:
    # What crosses from the core to a renderer is a frozen dataclass.
    event = StageEvent("prepare", "started")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.stage = "x"  # type: ignore[misc]
