"""The drift report: the HTML page, the numbers MLflow gets, and the drift history."""

from __future__ import annotations

import json
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


def test_history_records_every_check_in_order(
    cancer: BreastCancer, platform_settings: Settings
) -> None:
    settings = platform_settings
    definition = cancer.definition()
    shifted, _ = build_report(
        "3", cancer.reference, cancer.profile(200, seed=1, shift=0.6), definition, windows=[1, 2]
    )
    shifted = replace(shifted, html_path="/tmp/r.html")
    quiet, _ = build_report("3", cancer.reference, None, definition)
    assert drift_report.drift_history(settings, "diagnosis") == []
    assert drift_report.record_check(settings, shifted) == DriftCheckRecord.of(shifted)
    drift_report.record_check(settings, quiet)

    first, second = drift_report.drift_history(settings, "diagnosis")
    assert first == DriftCheckRecord.of(shifted)
    assert first.windows == (1, 2) and first.rows == 200 and first.html == "/tmp/r.html"
    assert first.decision == shifted.decision and first.decision.retrain
    assert first.drifting == tuple(shifted.drifting)
    assert second.rows == 0 and not second.decision.decided
    assert drift_report.drift_history(settings, "other") == []
    # In the platform database, not in a file under home.
    assert not drift_report.history_path(settings, "diagnosis").exists()


def test_every_home_on_one_database_sees_every_check(
    cancer: BreastCancer, platform_settings: Settings, tmp_path: Path
) -> None:
    """Two hosts (two homes) sharing one platform database share one drift history."""
    other = platform_settings.model_copy(update={"home": tmp_path / "host-b"})
    report, _ = build_report("3", cancer.reference, None, cancer.definition())
    drift_report.record_check(platform_settings, report)
    later = replace(report, created_at=report.created_at + 1, rows=5)
    drift_report.record_check(other, later)
    for s in (platform_settings, other):
        assert [r.rows for r in drift_report.drift_history(s, "diagnosis")] == [0, 5]
        assert drift_report.drift_models(s) == ["diagnosis"]


def test_a_history_file_of_an_older_aipaas_is_imported_once(
    cancer: BreastCancer, platform_settings: Settings, tmp_path: Path
) -> None:
    settings = platform_settings
    report, _ = build_report("2", cancer.reference, None, cancer.definition())
    old = [
        replace(DriftCheckRecord.of(report), at=1_700_000_000.0 + i, rows=i, version="1")
        for i in (1, 2)
    ]
    path = drift_report.history_path(settings, "diagnosis")
    path.parent.mkdir(parents=True)
    lines = [json.dumps(r.to_dict()) for r in old]
    path.write_text("\n".join(lines) + '\n{"at": 1700000003, "mod')  # a torn last line
    drift_report.record_check(settings, report)  # newer than both
    history = drift_report.drift_history(settings, "diagnosis")
    assert history[:2] == old and history[2] == DriftCheckRecord.of(report)
    assert not path.exists()
    (kept,) = path.parent.glob("history.jsonl.imported-*")
    assert kept.read_text().startswith(lines[0])
    assert len(drift_report.drift_history(settings, "diagnosis")) == 3  # once

    # The same bytes again (another host's copy of this home) add nothing;
    # a line an older process appended afterwards is new, and is imported.
    path.write_text(kept.read_text())
    assert len(drift_report.drift_history(settings, "diagnosis")) == 3
    path.write_text(json.dumps(replace(old[0], at=1_700_000_010.0, rows=9).to_dict()) + "\n")
    assert [r.rows for r in drift_report.drift_history(settings, "diagnosis")] == [1, 2, 9, 0]
    # Imported into the database, so another home on it (another host) sees it too.
    other = settings.model_copy(update={"home": tmp_path / "host-b"})
    assert [r.rows for r in drift_report.drift_history(other, "diagnosis")] == [1, 2, 9, 0]


def test_report_path_names_the_version_and_time(cancer: BreastCancer, home: Path) -> None:
    settings = Settings(_env_file=None, home=home)
    report, _ = build_report("4", cancer.reference, None, cancer.definition())
    report = replace(report, created_at=1_800_000_000.0)
    path = drift_report.report_path(settings, report)
    assert path == settings.reports_dir / "drift" / "diagnosis" / "v4-20270115T080000.html"
