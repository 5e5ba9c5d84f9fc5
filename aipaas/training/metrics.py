"""The metrics: one implementation for the search, the holdout and promotion.

Cross-validation inside each trial, the holdout evaluation after the
refit and promotion's scoring of registered versions all call
:func:`compute_metrics`, so their numbers compare.

For a binary classifier the positive class is the last of the sorted labels
(``classes_[1]``; for the demo ``malignant``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from aipaas.exceptions import ConfigurationError
from aipaas.modeldef import ONE_CLASS_METRICS, ModelDefinition

CLASSIFICATION_METRICS = ("roc_auc", "pr_auc", "accuracy", "f1", "precision", "recall", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
RANKING_METRICS = ("roc_auc", "pr_auc", "log_loss")  # these need class probabilities


def undefined_metrics(task: str, metrics: Sequence[str], y_true: ArrayLike) -> dict[str, str]:
    """The metrics that these rows cannot define, each with why.

    :func:`compute_metrics` still returns a number for most of them (precision
    with ``zero_division=0``, an r2 forced finite), and on a slice of the
    holdout that number would be read as a verdict. On rows of one class only
    accuracy and log loss mean something; r2 needs more than one target value.
    """
    values = pd.unique(pd.Series(np.asarray(y_true)).dropna())
    if len(values) == 0:
        return {m: "no rows" for m in metrics}
    if len(values) > 1:
        return {}
    if task == "classification":
        why = f"one class ({values[0]}) in these rows"
        return {m: why for m in metrics if m not in ONE_CLASS_METRICS}
    return {m: "one target value in these rows" for m in metrics if m == "r2"}


def check_metrics(definition: ModelDefinition) -> None:
    """Refuse a definition whose metrics this module cannot compute."""
    known = CLASSIFICATION_METRICS if definition.task == "classification" else REGRESSION_METRICS
    wanted = [definition.metric, *definition.metrics]
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise ConfigurationError(
            f"model {definition.name!r}: unknown {definition.task} metric(s) {unknown}; "
            f"choose from {list(known)}"
        )


def compute_metrics(
    task: str,
    metrics: Sequence[str],
    y_true: ArrayLike,
    pred: ArrayLike,
    proba: np.ndarray | None = None,
    classes: ArrayLike | None = None,
) -> dict[str, float]:
    """The named metrics; ``proba`` columns follow ``classes`` (sorted labels).

    A model without probabilities gets the threshold metrics only.
    """
    y = np.asarray(y_true)
    p = np.asarray(pred)
    if task == "regression":
        return _regression(metrics, y, p)
    labels = (
        np.asarray(classes).tolist()
        if classes is not None
        else sorted(set(y.tolist()) | set(p.tolist()))
    )
    out = _threshold(metrics, y, p, labels)
    if proba is not None:
        out |= _ranking(metrics, y, proba, labels)
    return {m: out[m] for m in metrics if m in out}  # in the order asked for


def _regression(metrics: Sequence[str], y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as skm

    scorers: dict[str, Callable[[], float]] = {
        "rmse": lambda: float(np.sqrt(skm.mean_squared_error(y, p))),
        "mae": lambda: float(skm.mean_absolute_error(y, p)),
        "r2": lambda: float(skm.r2_score(y, p)),
    }
    return {m: scorers[m]() for m in metrics if m in scorers}


def _threshold(
    metrics: Sequence[str], y: np.ndarray, p: np.ndarray, labels: list[Any]
) -> dict[str, float]:
    from sklearn import metrics as skm

    binary = len(labels) == 2
    kw: dict[str, Any] = {"average": "binary" if binary else "macro", "zero_division": 0}
    if binary:
        kw["pos_label"] = labels[-1]
    scorers = {"f1": skm.f1_score, "precision": skm.precision_score, "recall": skm.recall_score}
    out: dict[str, float] = {}
    for m in metrics:
        if m == "accuracy":
            out[m] = float(skm.accuracy_score(y, p))
        elif m in scorers:
            out[m] = float(scorers[m](y, p, **kw))
    return out


def _ranking(
    metrics: Sequence[str], y: np.ndarray, proba: np.ndarray, labels: list[Any]
) -> dict[str, float]:
    from sklearn import metrics as skm

    binary = len(labels) == 2
    out: dict[str, float] = {}
    for m in (m for m in metrics if m in RANKING_METRICS):
        if m == "log_loss":
            out[m] = float(skm.log_loss(y, proba, labels=labels))
        elif len(set(y.tolist())) < 2:
            out[m] = float("nan")  # AUC is undefined on one class
        elif binary:
            fn = skm.roc_auc_score if m == "roc_auc" else skm.average_precision_score
            out[m] = float(fn((y == labels[-1]).astype(int), proba[:, 1]))
        elif m == "roc_auc":
            out[m] = float(skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels))
        else:
            yb = np.stack([(y == c).astype(int) for c in labels], axis=1)
            out[m] = float(skm.average_precision_score(yb, proba, average="macro"))
    return out


def predict_outputs(model: Any, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None, list[Any]]:
    """Predictions, class probabilities (or None) and the class labels of ``model``."""
    pred = np.asarray(model.predict(X))
    proba = None
    raw = getattr(model, "classes_", None)
    classes: list[Any] = [] if raw is None else list(raw)
    if hasattr(model, "predict_proba") and classes:
        proba = np.asarray(model.predict_proba(X))
    return pred, proba, classes


def cross_validate(
    build: Callable[[dict[str, Any]], Any],
    params: dict[str, Any],
    X: pd.DataFrame,
    y: pd.Series,
    *,
    task: str,
    metric: str,
    folds: int,
    seed: int,
) -> list[float]:
    """The metric on each fold (stratified for classification) of the training data."""
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter = (
        StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        if task == "classification"
        else KFold(n_splits=folds, shuffle=True, random_state=seed)
    )
    scores = []
    for train_idx, test_idx in splitter.split(X, y):
        model = build(dict(params))
        model.fit(X.iloc[train_idx], y.iloc[train_idx])
        pred, proba, classes = predict_outputs(model, X.iloc[test_idx])
        got = compute_metrics(task, [metric], y.iloc[test_idx], pred, proba, classes)
        if metric not in got:
            raise ConfigurationError(
                f"metric {metric!r} needs predict_proba, which the model lacks"
            )
        scores.append(got[metric])
    return scores


def prepare_features(definition: ModelDefinition, df: pd.DataFrame) -> pd.DataFrame:
    """The feature columns, typed as the signature records them (float, or string ``text``)."""
    missing = [c for c in definition.features if c not in df.columns]
    if missing:
        raise ConfigurationError(
            f"model {definition.name!r}: columns {missing} missing from the data "
            f"(has {list(df.columns)[:10]}...)"
        )
    X = df[list(definition.features)].copy()
    if definition.is_text:
        return X.astype({"text": str})
    numeric = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c])]
    return X.astype({c: "float64" for c in numeric})
