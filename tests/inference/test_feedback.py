"""Feedback: a label joins its prediction once; labelled rows as the monitoring stage reads them."""

from __future__ import annotations

import pytest

from aipaas import audit
from aipaas.exceptions import AlreadyLabelledError, UnknownRequestError
from aipaas.inference import feedback


@pytest.fixture
def settings(platform_settings):
    """Every test here that touches the platform database runs on SQLite and on PostgreSQL."""
    return platform_settings


def _served(settings, request_id, outputs, inputs=None, model="diagnosis", version="1"):
    """Prediction rows committed as serving commits them: through the audit writer."""
    rows = inputs or [{}] * len(outputs)
    records = audit.prediction_records(
        request_id, model, version, rows, outputs, log_inputs=inputs is not None
    )
    writer = audit.AuditWriter(settings, commit_window_ms=0)
    writer.submit(audit.AuditRecord(request_id=request_id), records).result(10)
    writer.close()


def test_a_label_is_recorded_once_for_a_known_request(settings):
    _served(settings, "r1", ["malignant"])
    got = feedback.record_feedback(settings, "r1", "benign", key_id="k1")
    assert (got.request_id, got.model, got.version, got.label) == ("r1", "diagnosis", "1", "benign")
    with pytest.raises(AlreadyLabelledError, match="request 'r1' already has a label"):
        feedback.record_feedback(settings, "r1", "malignant")
    with pytest.raises(UnknownRequestError, match="no prediction with request_id 'nope'"):
        feedback.record_feedback(settings, "nope", "benign")


def test_labelled_rows_name_the_label_after_the_callers_target(settings):
    _served(settings, "r1", ["malignant"], inputs=[{"a": 1.0}])
    _served(settings, "r2", ["benign"])  # inputs not logged: no feature columns
    _served(settings, "r3", ["benign"])  # never labelled
    feedback.record_feedback(settings, "r1", "benign")
    feedback.record_feedback(settings, "r2", "benign")
    frame = feedback.labelled_rows(settings, "diagnosis", target="outcome")
    assert list(frame["request_id"]) == ["r1", "r2"]
    assert list(frame["outcome"]) == ["benign", "benign"]
    assert list(frame["prediction"]) == ["malignant", "benign"]
    assert frame.loc[0, "a"] == 1.0 and frame["a"].isna().iloc[1]
    assert "label" not in frame
    default = feedback.labelled_rows(settings, "diagnosis")
    assert list(default["label"]) == ["benign", "benign"]


def test_without_labels_the_frame_is_empty_with_its_columns(settings):
    frame = feedback.labelled_rows(settings, "diagnosis", target="outcome")
    assert frame.empty
    assert list(frame.columns) == ["outcome", *feedback.META_COLUMNS]


def test_a_list_label_on_a_batch_is_split_over_its_rows(settings):
    _served(settings, "b", ["malignant", "benign"], inputs=[{"a": 1.0}, {"a": -1.0}])
    feedback.record_feedback(settings, "b", ["benign", "benign"])
    frame = feedback.labelled_rows(settings, "diagnosis", target="outcome")
    assert list(frame["outcome"]) == ["benign", "benign"]
    assert list(frame["a"]) == [1.0, -1.0]
