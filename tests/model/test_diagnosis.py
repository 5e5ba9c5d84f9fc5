"""Behavioural tests of the demo model (Made-With-ML's split: minimum functionality,
direction, invariance), on the estimator its definition builds. No Ray, no MLflow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from aipaas.modeldef import load_definition
from aipaas.settings import PROJECT_ROOT
from aipaas.training.metrics import compute_metrics, predict_outputs

DEFINITION = load_definition("diagnosis", PROJECT_ROOT / "models")
# A point in the middle of the search space.
PARAMS = {"n_estimators": 120, "learning_rate": 0.08, "num_leaves": 15, "min_child_samples": 10}


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    d = load_breast_cancer(as_frame=True)
    X = d.data.rename(columns=lambda c: c.replace(" ", "_"))[list(DEFINITION.features)]
    y = pd.Series(np.where(d.target == 0, "malignant", "benign"), name="diagnosis")
    return train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)


@pytest.fixture(scope="module")
def model(data):
    X_train, _, y_train, _ = data
    return DEFINITION.build_estimator(dict(PARAMS)).fit(X_train, y_train)


def test_definition_matches_the_dataset(data) -> None:
    X_train = data[0]
    assert len(DEFINITION.features) == 30
    assert list(X_train.columns) == list(DEFINITION.features)
    assert DEFINITION.target == "diagnosis" and DEFINITION.metric in DEFINITION.metrics


def test_minimum_functionality_clears_the_promotion_floors(model, data) -> None:
    _, X_test, _, y_test = data
    pred, proba, classes = predict_outputs(model, X_test)
    got = compute_metrics("classification", DEFINITION.metrics, y_test, pred, proba, classes)
    for metric, floor in DEFINITION.gates.min_metrics.items():
        assert got[metric] >= floor, (metric, got[metric])


def test_outputs_are_labelled_probabilities(model, data) -> None:
    X_test = data[1]
    assert list(model.classes_) == ["benign", "malignant"]
    proba = model.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert set(model.predict(X_test)) == {"benign", "malignant"}


def test_direction_larger_worse_tumours_look_more_malignant(model, data) -> None:
    _, X_test, _, y_test = data
    benign = X_test[y_test == "benign"]
    bigger = benign.copy()
    for col in ("worst_radius", "worst_perimeter", "worst_area", "worst_concave_points"):
        bigger[col] = bigger[col] * 1.6
    before = model.predict_proba(benign)[:, 1]
    after = model.predict_proba(bigger)[:, 1]
    assert (after >= before - 1e-9).mean() > 0.9
    assert after.mean() > before.mean() + 0.1


def test_invariance_to_tiny_noise_and_to_batching(model, data) -> None:
    X_test = data[1]
    rng = np.random.default_rng(0)
    noisy = X_test * (1 + rng.normal(scale=1e-4, size=X_test.shape))
    assert (model.predict(noisy) == model.predict(X_test)).mean() >= 0.98
    one_by_one = np.vstack([model.predict_proba(X_test.iloc[[i]]) for i in range(20)])
    np.testing.assert_allclose(one_by_one, model.predict_proba(X_test.iloc[:20]))
