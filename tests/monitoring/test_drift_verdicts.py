"""Verdicts that read right: accuracy on a window of fresh labels, and every verdict's reason.

A retrain asked for by accuracy must say so ("accuracy 0.850 < 0.920 ..."),
never "0 features drifting -> retrain" alone; and once a retrain has started,
the labels it learns from must not ask for another one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from aipaas.exceptions import ConfigurationError
from aipaas.modeldef import DriftPolicy
from aipaas.monitoring import drift, drift_stats, retrain
from aipaas.monitoring.drift_report import DriftCheckRecord, drift_history
from aipaas.monitoring.drift_stats import FeatureDrift, summary_line
from aipaas.settings import Settings
from tests.monitoring.test_drift import FEW, MODEL, Champions, _serve

if TYPE_CHECKING:
    from tests.monitoring.conftest import BreastCancer

NOW = 1_800_000_000.0
ACCURACY_REASON = "accuracy 0.850 < 0.920 (holdout 0.970 - policy 0.05) on 300 labelled rows"


def labels(
    n: int, right: int, *, start: float, step: float = 1.0, version: str = "1"
) -> pd.DataFrame:
    """``n`` labelled predictions, the first ``right`` of them correct, one every ``step`` s."""
    return pd.DataFrame(
        {
            "target": [1] * n,
            "prediction": [1] * right + [0] * (n - right),
            "model_version": version,
            "labelled_at": pd.to_datetime([start + i * step for i in range(n)], unit="s", utc=True),
        }
    )


def features(n: int, drifting: int) -> list[FeatureDrift]:
    return [
        FeatureDrift(f"f{i}", "numeric", "hellinger", 0.3 if i < drifting else 0.01, 0.15,
                     i < drifting, reasons=("hellinger 0.300 > 0.15",) if i < drifting else ())
        for i in range(n)
    ]  # fmt: skip


def accuracy(
    frame: pd.DataFrame, cancer: BreastCancer, **policy: object
) -> drift_stats.AccuracyCheck:
    definition = cancer.definition(max_accuracy_drop=0.05, **policy)
    check = drift_stats.accuracy_check(frame, definition, 0.97, now=NOW)
    assert check is not None
    return check


# -- the reason of each verdict --------------------------------------------------------


def test_a_retrain_for_accuracy_says_accuracy(cancer: BreastCancer) -> None:
    check = accuracy(labels(300, 255, start=NOW - 600), cancer)
    assert check.accuracy == pytest.approx(0.85) and check.violated
    decision = drift_stats.decide_retrain(DriftPolicy(), 200, features(30, 0), check)
    assert decision.retrain
    assert decision.reasons == (ACCURACY_REASON, "0 of 30 features drifting (policy: 3)")
    assert decision.cause == ACCURACY_REASON
    line = summary_line("1", (3, 4), 200, [], decision)
    assert line == f"v1 windows [3, 4]: 200 rows, 0 features drifting -> retrain: {ACCURACY_REASON}"
    assert not line.endswith("features drifting -> retrain")


def test_a_retrain_for_features_lists_them(cancer: BreastCancer) -> None:
    check = accuracy(labels(300, 291, start=NOW - 600), cancer)  # 0.970: fine
    decision = drift_stats.decide_retrain(DriftPolicy(), 200, features(30, 9), check)
    assert decision.retrain and decision.cause == "9 features drifting (policy: 3)"
    assert decision.reasons[0].startswith(
        "9 features drifting (policy: 3): f0 (hellinger 0.300 > 0.15), f1 (hellinger"
    )
    assert decision.reasons[0].endswith("and 1 more")
    assert decision.reasons[1] == (
        "accuracy 0.970 >= 0.920 (holdout 0.970 - policy 0.05) on 300 labelled rows"
    )
    line = summary_line("1", (1,), 200, [f"f{i}" for i in range(9)], decision)
    assert line.endswith("9 features drifting (f0, f1, f2, f3 ...) -> retrain: "
                         "9 features drifting (policy: 3)")  # fmt: skip


def test_both_causes_are_named(cancer: BreastCancer) -> None:
    check = accuracy(labels(300, 255, start=NOW - 600), cancer)
    decision = drift_stats.decide_retrain(DriftPolicy(), 200, features(30, 4), check)
    assert decision.cause == f"{ACCURACY_REASON}; 4 features drifting (policy: 3)"


def test_no_drift_and_no_decision_say_why(cancer: BreastCancer) -> None:
    check = accuracy(labels(300, 285, start=NOW - 600), cancer)
    calm = drift_stats.decide_retrain(DriftPolicy(), 200, features(30, 1), check)
    assert not calm.retrain and calm.decided
    assert calm.reasons == (
        "no drift: 1 of 30 features drifting (policy: 3)",
        "accuracy 0.950 >= 0.920 (holdout 0.970 - policy 0.05) on 300 labelled rows",
    )
    assert summary_line("1", (1,), 200, ["f0"], calm).endswith("-> no drift")
    idle = drift_stats.decide_retrain(DriftPolicy(), 40, [], None)
    assert summary_line("1", (1,), 40, [], idle) == (
        "v1 windows [1]: 40 rows, 0 features drifting -> "
        "no decision: only 40 served rows since the last check (< min_rows 100)"
    )


def test_an_older_history_row_reads_with_its_reason() -> None:
    """A row an older aipaas wrote has no cause nor summary: they are made from its reasons."""
    old = {
        "at": 1.0, "model": MODEL, "version": "1", "rows": 200, "windows": [1], "drifting": [],
        "decision": {"decided": True, "retrain": True,
                     "reasons": ["accuracy on 300 labelled rows is 0.850, 0.120 below ..."]},
        "html": "/elsewhere/v1-20260101T000000.html",
    }  # fmt: skip
    record = DriftCheckRecord.from_dict(old)
    assert record.mlflow_run is None and record.report_uri is None and record.store_error is None
    assert record.summary.endswith(
        "-> retrain: accuracy on 300 labelled rows is 0.850, 0.120 below ..."
    )
    assert record.report_name == "v1-20260101T000000.html"
    assert DriftCheckRecord.from_dict(record.to_dict()) == record


# -- the window of labels -------------------------------------------------------------


def test_accuracy_is_judged_on_the_newest_rows_of_the_window(cancer: BreastCancer) -> None:
    frame = pd.concat([labels(300, 0, start=NOW - 900), labels(100, 100, start=NOW - 300)])
    recent = accuracy(frame, cancer, accuracy_window_rows=100)
    assert recent.labelled_rows == 100 and recent.accuracy == 1.0 and not recent.violated
    everything = accuracy(frame, cancer, accuracy_window_rows=1000)
    assert everything.labelled_rows == 400 and everything.violated


def test_labels_older_than_the_window_hours_do_not_count(cancer: BreastCancer) -> None:
    frame = pd.concat([labels(300, 0, start=NOW - 10 * 3600), labels(50, 50, start=NOW - 600)])
    shuffled = frame.sample(frac=1.0, random_state=1)  # order comes from labelled_at
    check = accuracy(shuffled, cancer, accuracy_window_hours=1.0)
    assert check.labelled_rows == 50 and check.accuracy == 1.0
    assert "labelled in the last 1 h" in check.window
    assert accuracy(shuffled, cancer, accuracy_window_hours=None).labelled_rows == 350


def test_labels_a_retrain_consumed_do_not_count(cancer: BreastCancer) -> None:
    frame = pd.concat([labels(300, 0, start=NOW - 900), labels(40, 40, start=NOW - 100)])
    definition = cancer.definition(max_accuracy_drop=0.05)
    check = drift_stats.accuracy_check(frame, definition, 0.97, consumed_through=NOW - 200, now=NOW)
    assert check is not None and check.labelled_rows == 40 and not check.violated
    assert "labels before it went to an earlier retrain" in check.window
    # Nothing left after the mark: accuracy is not judged, and the verdict says why.
    current = cancer.profile(150, seed=4)
    report, _ = drift_stats.build_report(
        "1", cancer.reference, current, definition, feedback=frame.iloc[:300],
        holdout_accuracy=0.97, consumed_through=NOW - 200, now=NOW,
    )  # fmt: skip
    assert report.accuracy is None and not report.decision.retrain
    assert report.decision.reasons[-1] == (
        "accuracy not judged: 0 labelled rows in the window since the last retrain started, "
        "fewer than the 25 needed"
    )


@pytest.mark.parametrize(
    ("field", "value"), [("accuracy_window_rows", 0), ("accuracy_window_hours", 0.0)]
)
def test_a_window_that_holds_nothing_is_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=field):
        DriftPolicy(**{field: value})  # type: ignore[arg-type]


# -- the check, after a retrain started ----------------------------------------------


class Labels:
    """Stands in for the feedback store: the labels given so far, oldest first."""

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []

    def __call__(self, settings: Settings, model: str, *, target: str) -> pd.DataFrame:
        return pd.concat(self.frames, ignore_index=True) if self.frames else pd.DataFrame()


def test_labels_a_retrain_learnt_from_do_not_ask_for_a_second_retrain(
    cancer: BreastCancer, on_db: Callable[[int], Settings]
) -> None:
    settings = on_db(100)
    store, champions = Labels(), Champions(cancer)  # holdout accuracy 0.95
    definition = cancer.definition(FEW)

    def check() -> drift.DriftReport:
        return drift.check_model(
            settings, definition, champion_loader=champions, labelled_rows=store
        )

    now = time.time()
    store.frames.append(labels(300, 210, start=now - 400))  # 0.700 on ordinary traffic
    _serve(settings, cancer, cancer.served(100, seed=11), "1")
    first = check()
    assert first.decision.retrain and not first.drifting
    assert first.decision.cause.startswith("accuracy 0.700 < 0.900 (holdout 0.950 - policy 0.05)")
    assert "0 features drifting -> retrain: accuracy 0.700" in first.summary

    retrain.record_start(settings, MODEL, now=time.time())  # the drift flow started a retrain
    _serve(settings, cancer, cancer.served(100, seed=12), "1")
    second = check()  # the old version still serves; its labels are the retrain's data
    assert second.decision.decided and not second.decision.retrain, second.decision.reasons
    assert second.accuracy is None
    assert second.decision.reasons[-1] == (
        "accuracy not judged: 0 labelled rows in the window since the last retrain started, "
        "fewer than the 25 needed"
    )
    assert drift.labels_consumed_through(settings, MODEL) is not None

    # New labels, after the start, are new evidence: they may ask again.
    store.frames.append(labels(50, 30, start=time.time() + 1))
    _serve(settings, cancer, cancer.served(100, seed=13), "1")
    third = check()
    assert third.decision.retrain and third.accuracy is not None
    assert third.accuracy.labelled_rows == 50
    assert third.decision.cause.startswith("accuracy 0.600 < 0.900")

    history = drift_history(settings, MODEL)
    assert [h.decision.verdict for h in history] == ["retrain", "no retrain", "retrain"]
    assert [h.summary for h in history] == [first.summary, second.summary, third.summary]
    assert all("-> retrain: accuracy" in h.summary for h in (history[0], history[2]))


def _label_served(settings: Settings, prefix: str, n: int) -> None:
    """``n`` one-row predictions of version 1 (all ``0``), through the audit writer, labelled 1."""
    from aipaas import audit
    from aipaas.inference import feedback

    writer = audit.AuditWriter(settings, commit_window_ms=0)
    try:
        for i in range(n):
            rid = f"{prefix}{i}"
            records = audit.prediction_records(rid, MODEL, "1", [{}], [0], log_inputs=False)
            writer.submit(audit.AuditRecord(request_id=rid), records).result(10)
    finally:
        writer.close()
    for i in range(n):
        feedback.record_feedback(settings, f"{prefix}{i}", 1)


def test_the_feedback_store_reads_only_labels_after_the_retrain_start(
    cancer: BreastCancer, platform_settings: Settings
) -> None:
    """The real feedback store on each backend: the window starts at the last retrain start."""
    settings = platform_settings
    definition = cancer.definition(FEW)
    _label_served(settings, "old", 30)
    time.sleep(0.01)
    retrain.record_start(settings, MODEL)
    consumed = drift.labels_consumed_through(settings, MODEL)
    assert consumed is not None
    assert drift.champion_feedback(settings, definition, "1", since=consumed).empty
    assert len(drift.champion_feedback(settings, definition, "1")) == 30  # no window: all
    time.sleep(0.01)
    _label_served(settings, "new", 30)
    fresh = drift.champion_feedback(settings, definition, "1", since=consumed)
    assert sorted(fresh["request_id"]) == sorted(f"new{i}" for i in range(30))
    check = drift_stats.accuracy_check(fresh, definition, 0.95, consumed_through=consumed)
    assert check is not None and check.labelled_rows == 30 and check.accuracy == 0.0
