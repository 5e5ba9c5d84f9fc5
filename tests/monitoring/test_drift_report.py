"""The drift report: the HTML page, the numbers MLflow gets, and the drift history."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from aipaas.monitoring import drift_report
from aipaas.monitoring.drift_report import DriftCheckRecord
from aipaas.monitoring.drift_stats import build_report
from aipaas.settings import Settings

if TYPE_CHECKING:
    from tests.monitoring.conftest import BreastCancer


def test_html_report_has_one_plot_per_feature(cancer: BreastCancer, tmp_path: Path) -> None:
    definition = cancer.definition()
    current = cancer.profile(200, seed=1, shift=0.6)
    report, comparisons = build_report("7", cancer.reference, current, definition)
    path = drift_report.write_html(report, comparisons, tmp_path / "r" / "drift.html")
    page = path.read_text()
    assert page.count("<img ") == len(cancer.features) + 1  # every feature and the prediction
    assert "Decision: retrain" in page
    assert "Drift: diagnosis version 7" in page
    assert cancer.features[0] in page
    assert page.count("<tr class='drift'>") == len(report.drifting)
    assert len(report.table()) == len(cancer.features) + 1


def test_html_report_of_a_check_without_traffic(cancer: BreastCancer, tmp_path: Path) -> None:
    report, comparisons = build_report("7", cancer.reference, None, cancer.definition())
    page = drift_report.write_html(report, comparisons, tmp_path / "empty.html").read_text()
    assert "Decision: no decision" in page and "<img " not in page
    assert "0 served rows from windows -." in page


def test_metrics_summarise_the_report(cancer: BreastCancer) -> None:
    current = cancer.profile(200, seed=1, shift=0.6)
    report, _ = build_report("7", cancer.reference, current, cancer.definition())
    metrics = drift_report.report_metrics(report)
    assert metrics["drift_features_drifting"] == len(report.drifting) > 0
    assert metrics["drift_retrain"] == 1.0
    assert metrics["drift_rows"] == 200.0
    assert metrics[f"drift_{cancer.features[0]}"] == report.features[0].score
    assert report.prediction is not None
    assert metrics["drift_prediction"] == report.prediction.score
    assert "feedback_accuracy" not in metrics  # no feedback in this check


def test_history_records_every_check_in_order(cancer: BreastCancer, home: Path) -> None:
    settings = Settings(_env_file=None, home=home)
    definition = cancer.definition()
    shifted, _ = build_report(
        "3", cancer.reference, cancer.profile(200, seed=1, shift=0.6), definition, windows=[1, 2]
    )
    shifted = replace(shifted, html_path="/tmp/r.html")
    quiet, _ = build_report("3", cancer.reference, None, definition)
    assert drift_report.drift_history(settings, "diagnosis") == []
    drift_report.record_check(settings, shifted)
    path = drift_report.record_check(settings, quiet)
    assert path == settings.reports_dir / "drift" / "diagnosis" / "history.jsonl"

    first, second = drift_report.drift_history(settings, "diagnosis")
    assert first == DriftCheckRecord.of(shifted)
    assert first.windows == (1, 2) and first.rows == 200 and first.html == "/tmp/r.html"
    assert first.decision == shifted.decision and first.decision.retrain
    assert first.drifting == tuple(shifted.drifting)
    assert second.rows == 0 and not second.decision.decided
    assert drift_report.drift_history(settings, "other") == []


def test_report_path_names_the_version_and_time(cancer: BreastCancer, home: Path) -> None:
    settings = Settings(_env_file=None, home=home)
    report, _ = build_report("4", cancer.reference, None, cancer.definition())
    report = replace(report, created_at=1_800_000_000.0)
    path = drift_report.report_path(settings, report)
    assert path == settings.reports_dir / "drift" / "diagnosis" / "v4-20270115T080000.html"
