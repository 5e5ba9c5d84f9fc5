"""The metrics: the numbers the search, the holdout and promotion all compare."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aipaas.exceptions import ConfigurationError
from aipaas.training.metrics import (
    check_metrics,
    compute_metrics,
    cross_validate,
    predict_outputs,
    prepare_features,
)
from tests.support.definitions import tiny_definition

CLASSES = ["benign", "malignant"]


def test_binary_metrics_use_the_last_label_as_positive() -> None:
    y = np.array(["benign", "malignant", "malignant", "benign"])
    pred = np.array(["benign", "malignant", "benign", "benign"])
    # P(malignant) ranks both malignant rows above both benign rows: AUC 1.
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    asked = ["roc_auc", "accuracy", "f1", "recall", "precision"]
    got = compute_metrics("classification", asked, y, pred, proba, CLASSES)
    assert list(got) == asked  # in the order asked for: the report's rows
    assert got["roc_auc"] == pytest.approx(1.0)
    assert got["accuracy"] == pytest.approx(0.75)
    assert got["recall"] == pytest.approx(0.5)  # one of two malignant found
    assert got["precision"] == pytest.approx(1.0)
    assert got["f1"] == pytest.approx(2 / 3)


def test_inverted_scores_give_auc_zero() -> None:
    y = np.array(["benign", "malignant"])
    proba = np.array([[0.1, 0.9], [0.9, 0.1]])
    got = compute_metrics("classification", ["roc_auc"], y, y, proba, CLASSES)
    assert got["roc_auc"] == pytest.approx(0.0)


def test_multiclass_and_regression_metrics() -> None:
    y = np.array(["a", "b", "c", "a"])
    proba = np.eye(3)[[0, 1, 2, 0]]
    got = compute_metrics("classification", ["roc_auc", "f1"], y, y, proba, ["a", "b", "c"])
    assert got == {"roc_auc": pytest.approx(1.0), "f1": pytest.approx(1.0)}
    reg = compute_metrics("regression", ["rmse", "mae"], [1.0, 2.0], [1.0, 4.0])
    assert reg["rmse"] == pytest.approx(np.sqrt(2.0)) and reg["mae"] == pytest.approx(1.0)


def test_ranking_metrics_need_probabilities_and_two_classes() -> None:
    y = np.array(["benign", "benign"])
    without = compute_metrics("classification", ["roc_auc", "accuracy"], y, y, None, CLASSES)
    assert without == {"accuracy": 1.0}
    one_class = compute_metrics("classification", ["roc_auc"], y, y, np.eye(2), CLASSES)
    assert np.isnan(one_class["roc_auc"])


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="bogus"):
        check_metrics(tiny_definition(metrics=("accuracy", "bogus")))
    with pytest.raises(ConfigurationError, match=r"regression metric\(s\) \['roc_auc'\]"):
        check_metrics(tiny_definition(task="regression", metrics=("rmse",)))


def test_features_are_typed_as_the_signature_says() -> None:
    d = tiny_definition()
    X = prepare_features(d, pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5], "y": [0, 1]}))
    assert list(X.columns) == ["a", "b"] and all(X.dtypes == "float64")
    with pytest.raises(ConfigurationError, match=r"\['b'\] missing"):
        prepare_features(d, pd.DataFrame({"a": [1]}))
    text = prepare_features(tiny_definition(features=("text",)), pd.DataFrame({"text": [1, "x"]}))
    assert list(text["text"]) == ["1", "x"]


def test_cross_validation_scores_each_fold() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=80), "b": rng.normal(size=80)})
    y = pd.Series(np.where(X["a"] > 0, "yes", "no"))
    scores = cross_validate(
        lambda p: LogisticRegression(**p),
        {"C": 1.0},
        X,
        y,
        task="classification",
        metric="roc_auc",
        folds=3,
        seed=0,
    )
    assert len(scores) == 3 and min(scores) > 0.9


def test_predict_outputs_without_probabilities() -> None:
    class Threshold:
        def predict(self, X: pd.DataFrame) -> np.ndarray:
            return np.where(X["a"] > 0, "yes", "no")

    pred, proba, classes = predict_outputs(Threshold(), pd.DataFrame({"a": [-1.0, 1.0]}))
    assert list(pred) == ["no", "yes"] and proba is None and classes == []
