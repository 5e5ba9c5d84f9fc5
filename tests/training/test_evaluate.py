"""Metrics, latency and the report: the numbers promotion and the README rely on."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aipaas.exceptions import ConfigurationError
from aipaas.modeldef import ModelDefinition, Uniform
from aipaas.training.evaluate import (
    Evaluation,
    check_metrics,
    compute_metrics,
    measure_latency,
    prepare_features,
    write_report,
)

CLASSES = ["benign", "malignant"]


def test_binary_metrics_use_the_last_label_as_positive() -> None:
    y = np.array(["benign", "malignant", "malignant", "benign"])
    pred = np.array(["benign", "malignant", "benign", "benign"])
    # P(malignant) ranks both malignant rows above both benign rows: AUC 1.
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    got = compute_metrics(
        "classification",
        ["roc_auc", "accuracy", "f1", "recall", "precision"],
        y,
        pred,
        proba,
        CLASSES,
    )
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


def test_unknown_metric_is_refused() -> None:
    d = ModelDefinition(
        name="m",
        dataset="d",
        target="y",
        features=("a",),
        build_estimator=lambda p: None,
        search_space={"a": Uniform(0, 1)},
        metrics=("accuracy", "bogus"),
    )
    with pytest.raises(ConfigurationError, match="bogus"):
        check_metrics(d)


def test_measure_latency_reports_percentiles_in_ms() -> None:
    lat = measure_latency(lambda x: time.sleep(0.002), [1], [1, 2], repeats=20, batch_repeats=5)
    assert 1.5 < lat["latency_p50_ms"] < 50
    assert lat["latency_p99_ms"] >= lat["latency_p50_ms"]
    assert set(lat) >= {"latency_batch_p50_ms", "latency_batch_p99_ms"}


def test_features_are_typed_as_the_signature_says() -> None:
    d = ModelDefinition(
        name="m",
        dataset="d",
        target="y",
        features=("a", "b"),
        build_estimator=lambda p: None,
        search_space={"x": Uniform(0, 1)},
    )
    X = prepare_features(d, pd.DataFrame({"a": [1, 2], "b": [0.5, 1.5], "y": [0, 1]}))
    assert list(X.columns) == ["a", "b"] and all(X.dtypes == "float64")
    with pytest.raises(ConfigurationError, match=r"\['b'\] missing"):
        prepare_features(d, pd.DataFrame({"a": [1]}))


def test_report_has_plots_and_per_class_table(tmp_path: Path) -> None:
    y = np.array(["benign", "malignant"] * 10)
    proba = np.column_stack([np.linspace(1, 0, 20), np.linspace(0, 1, 20)])
    ev = Evaluation(
        task="classification",
        metrics={"roc_auc": 0.9},
        rows=20,
        shards=2,
        classes=CLASSES,
        per_class=[
            {"class": c, "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 10} for c in CLASSES
        ],
        confusion=[[10, 0], [0, 10]],
        y_true=y,
        pred=y,
        proba=proba,
    )
    write_report(ev, {"latency_p99_ms": 1.0}, tmp_path, title="t")
    names = {p.name for p in tmp_path.iterdir()}
    assert {"report.md", "report.html", "roc.png", "pr.png", "confusion_matrix.png"} <= names
    assert "| malignant |" in (tmp_path / "report.md").read_text()
    assert "data:image/png;base64" in (tmp_path / "report.html").read_text()
