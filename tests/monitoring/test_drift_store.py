"""Drift checks stored where every host reads them: a real MLflow server, two hosts, one database.

Host A runs the check; host B (its own home, no report file) reads the
history from the shared platform database and the report and window profile
from MLflow. With MLflow down, the check still decides and records.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from aipaas.monitoring import drift, drift_report, drift_stats, drift_store
from aipaas.monitoring.drift import Champion
from aipaas.monitoring.drift_report import drift_history
from aipaas.settings import Settings
from aipaas.training import tags
from tests.monitoring.mlflow_server import host
from tests.monitoring.test_drift import FEW, MODEL, _serve, no_feedback
from tests.support.net import free_port

if TYPE_CHECKING:
    from tests.monitoring.conftest import BreastCancer


def test_a_check_is_stored_where_another_host_reads_it(
    cancer: BreastCancer, tracking_server: Settings, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    shared = f"sqlite:///{tmp_path / 'platform.db'}"
    a = host(tmp_path / "a", tracking_server, shared, monitoring={"window_rows": 50})
    b = host(tmp_path / "b", tracking_server, shared)
    _serve(a, cancer, cancer.served(100, seed=1, shift=0.7), "1")
    champion = Champion("1", cancer.reference, holdout_accuracy=0.95, run_id="0123abcd")
    report = drift.check_model(
        a, cancer.definition(FEW), champion_loader=lambda s, m: champion, labelled_rows=no_feedback
    )
    assert report.decision.retrain and report.windows == (1, 2)
    assert report.store_error is None and report.mlflow_run is not None
    name = Path(report.html_path or "").name

    (record,) = drift_history(b, MODEL)  # host B sees host A's check ...
    assert record.mlflow_run == report.mlflow_run and record.report_name == name
    assert record.report_uri is not None
    assert record.report_uri.startswith("mlflow-artifacts:/")
    assert record.report_uri.endswith(f"/{record.mlflow_run}/artifacts/drift/{name}")
    assert record.summary == report.summary and "-> retrain: " in record.summary

    Path(report.html_path or "").unlink()  # ... and reads its report with no file anywhere
    assert not (b.reports_dir / "drift" / MODEL / name).exists()
    page = drift_store.fetch_report(b, record.mlflow_run, name).decode()
    assert f"Drift: {MODEL} version 1" in page and "Decision: retrain" in page
    assert page.count("<img ") == FEW + 1  # the plots came along
    window = drift_store.fetch_window_profile(b, record.mlflow_run)
    assert window.num_rows == 100 and set(cancer.features[:FEW]) <= set(window.columns)

    client = MlflowClient(tracking_uri=b.mlflow_tracking_uri)
    run = client.get_run(record.mlflow_run)
    assert client.get_experiment(run.info.experiment_id).name == "aipaas-monitoring"
    assert run.info.status == "FINISHED"
    assert run.data.tags[tags.MODEL_DEFINITION] == MODEL
    assert run.data.tags[tags.DRIFT_VERSION] == "1"
    assert run.data.tags[tags.KIND] == tags.KIND_DRIFT_CHECK
    assert run.data.tags[drift_store.DECISION_TAG] == "retrain"
    assert run.data.tags[drift_store.WINDOWS_TAG] == "1,2"
    assert run.data.tags[drift_store.CHAMPION_RUN_TAG] == "0123abcd"
    assert run.data.tags[drift_store.MODEL_URI_TAG] == f"models:/{MODEL}/1"
    assert run.data.tags[drift_store.CAUSE_TAG] == report.decision.cause
    assert run.data.metrics["drift_rows"] == 100.0 and run.data.metrics["drift_retrain"] == 1.0

    # The flow's and the CLI's "log to MLflow" return the check's run: nothing twice.
    assert drift_report.log_to_mlflow(a, report) == report.mlflow_run
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_missing_report_is_a_clear_error(
    tracking_server: Settings, tmp_path: Path, cancer: BreastCancer
) -> None:
    from aipaas.exceptions import ModelNotFoundError

    s = host(tmp_path / "a", tracking_server, f"sqlite:///{tmp_path / 'p.db'}")
    report, _ = drift_stats.build_report("1", cancer.reference, None, cancer.definition(FEW))
    stored = drift_store.store_check(s, report, html=None, window=None)
    assert stored.report_uri is None
    with pytest.raises(
        ModelNotFoundError, match="has no drift report at drift/v1-20260101T000000.html"
    ):
        drift_store.fetch_report(s, stored.run_id, "v1-20260101T000000.html")


def test_with_mlflow_down_the_check_still_decides_and_records(
    cancer: BreastCancer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = {"port": free_port(), "http_max_retries": 0}  # nothing listens there
    s = Settings(_env_file=None, home=tmp_path, mlflow=dead, monitoring={"window_rows": 100})
    _serve(s, cancer, cancer.served(100, seed=1, shift=0.7), "1")
    with caplog.at_level(logging.WARNING, logger="aipaas.monitoring.drift"):
        report = drift.check_model(
            s, cancer.definition(FEW),
            champion_loader=lambda s, m: Champion("1", cancer.reference, 0.95),
            labelled_rows=no_feedback,
        )  # fmt: skip
    assert report.decision.retrain and report.mlflow_run is None
    assert report.store_error is not None and "did not answer" in report.store_error
    (record,) = drift_history(s, MODEL)
    assert record.decision.retrain and record.mlflow_run is None and record.report_uri is None
    assert record.store_error == report.store_error
    assert record.html is not None and Path(record.html).is_file()  # this host keeps its report
    assert "was not stored in MLflow" in caplog.text and "retrain" in caplog.text
    # The verdict counted: its windows are consumed, as for any decided check.
    assert drift.collect_windows(s, MODEL, "1")[1] == []


def test_a_check_kept_on_this_host_on_request(
    cancer: BreastCancer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``report_store=None`` (``--no-mlflow``): no MLflow call, no warning, nothing claimed."""
    dead = {"port": free_port(), "http_max_retries": 0}
    s = Settings(_env_file=None, home=tmp_path, mlflow=dead, monitoring={"window_rows": 100})
    _serve(s, cancer, cancer.served(100, seed=1, shift=0.7), "1")
    with caplog.at_level(logging.WARNING, logger="aipaas.monitoring.drift"):
        report = drift.check_model(
            s, cancer.definition(FEW),
            champion_loader=lambda s, m: Champion("1", cancer.reference, 0.95),
            labelled_rows=no_feedback, report_store=None,
        )  # fmt: skip
    assert report.decision.retrain
    assert (report.mlflow_run, report.report_uri, report.store_error) == (None, None, None)
    (record,) = drift_history(s, MODEL)
    assert record.mlflow_run is None and record.store_error is None
    assert "not stored" not in caplog.text
