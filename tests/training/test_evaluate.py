"""The holdout evaluation and its report; scoring a registered version for promotion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aipaas.modeldef import ModelDefinition
from aipaas.settings import Settings
from aipaas.training import registry
from aipaas.training.evaluate import (
    HoldoutEvaluation,
    holdout_evaluation,
    score_version,
    write_report,
)
from aipaas.training.latency import Latency
from tests.support.definitions import tiny_definition
from tests.support.registry import HOLDOUT, register_tiny, tiny_metrics

CLASSES = ["benign", "malignant"]
LATENCY = Latency(p50_ms=0.5, p99_ms=1.0, batch_p50_ms=2.0, batch_p99_ms=3.0, batch_rows=100)


def _definition(**kw: object) -> ModelDefinition:
    return tiny_definition(**{"metrics": ("roc_auc", "accuracy"), **kw})


def _evaluation() -> HoldoutEvaluation:
    y = np.array(["benign", "malignant"] * 10)
    pred = y.copy()
    pred[0] = "malignant"  # one benign row called malignant
    proba = np.column_stack([np.linspace(1, 0, 20), np.linspace(0, 1, 20)])
    return holdout_evaluation(_definition(), y, pred, proba, CLASSES, shards=2)


def test_per_class_table_and_confusion_matrix() -> None:
    ev = _evaluation()
    assert ev.rows == 20 and ev.shards == 2 and ev.classes == CLASSES
    assert ev.confusion == [[9, 1], [0, 10]]
    benign, malignant = ev.per_class
    assert benign["recall"] == pytest.approx(0.9) and benign["support"] == 10
    assert malignant["precision"] == pytest.approx(10 / 11)
    assert ev.metrics["accuracy"] == pytest.approx(0.95)


def test_a_regression_has_no_per_class_table() -> None:
    d = _definition(task="regression", metric="rmse", mode="min", metrics=("rmse",))
    ev = holdout_evaluation(d, np.array([1.0, 2.0]), np.array([1.0, 3.0]), None, [])
    assert ev.per_class == [] and ev.confusion == []
    assert ev.metrics["rmse"] == pytest.approx(np.sqrt(0.5))


def test_report_has_plots_tables_and_the_latency(tmp_path: Path) -> None:
    write_report(_evaluation(), LATENCY, tmp_path, title="t", extra={"best_params": {"C": 1}})
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "report.md",
        "report.html",
        "roc.png",
        "pr.png",
        "confusion_matrix.png",
        "per_class.csv",
        "metrics.json",
    } <= names
    md = (tmp_path / "report.md").read_text()
    assert "| malignant |" in md and "| latency_p99_ms | 1.000 |" in md and '"C": 1' in md
    assert "data:image/png;base64" in (tmp_path / "report.html").read_text()
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["latency_ms"]["latency_batch_rows"] == 100
    assert summary["best_params"] == {"C": 1}


def test_score_version_loads_the_native_model(settings: Settings, tmp_path: Path) -> None:
    from tests.support.registry import tiny_settings

    s = tiny_settings(settings, tmp_path)
    version = register_tiny(s)
    registry.connect(s)
    got = score_version(f"models:/tiny/{version}", _definition(), HOLDOUT)
    _, model = registry.load_native(f"models:/tiny/{version}")
    assert got == pytest.approx(tiny_metrics(model, HOLDOUT, ("a", "b")))
    assert got["roc_auc"] > 0.8  # probabilities were used: the native flavour, not pyfunc
