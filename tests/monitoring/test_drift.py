"""Drift scores, the policy's verdict and the report, on breast-cancer data.

The reference is a training split of scikit-learn's bundled breast cancer
data (no download); served traffic is a resampled, slightly perturbed copy
(no drift) or a copy with features shifted (drift).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from aipaas.datasets import profiles as monitoring
from aipaas.modeldef import DriftPolicy, ModelDefinition
from aipaas.monitoring import drift
from aipaas.monitoring.spool import Profiler, SpoolWriter
from aipaas.settings import Settings


def _data() -> pd.DataFrame:
    df = load_breast_cancer(as_frame=True).frame
    df.columns = [c.replace(" ", "_") for c in df.columns]
    return df


DATA = _data()
FEATURES = tuple(c for c in DATA.columns if c != "target")
SPLIT = np.random.default_rng(0).permutation(len(DATA))
TRAIN, HOLDOUT = DATA.iloc[SPLIT[:455]], DATA.iloc[SPLIT[455:]]


def _definition(**policy: object) -> ModelDefinition:
    return ModelDefinition(
        name="diagnosis",
        dataset="breast_cancer",
        target="target",
        features=FEATURES,
        build_estimator=lambda params: None,
        search_space={},
        drift=DriftPolicy(**policy),  # type: ignore[arg-type]
    )


def _served(n: int, seed: int, shift: float = 0.0, shifted: int = 10) -> pd.DataFrame:
    """Served rows: a resample with 1% noise; ``shift`` std-devs added to some features."""
    rng = np.random.default_rng(seed)
    cur = DATA.sample(n, replace=True, random_state=seed).copy()
    cur[list(FEATURES)] = cur[list(FEATURES)] * (1 + rng.normal(0, 0.01, (n, len(FEATURES))))
    for col in FEATURES[:shifted]:
        cur[col] = cur[col] + shift * TRAIN[col].std()
    return cur.rename(columns={"target": "prediction"})


@pytest.fixture(scope="module")
def reference() -> monitoring.Profile:
    return monitoring.profile_frame(TRAIN)


@pytest.mark.parametrize("n", [100, 250])
def test_no_false_alarm_on_unshifted_traffic(reference: monitoring.Profile, n: int) -> None:
    definition = _definition()
    for seed in range(5):
        current = monitoring.profile_frame(_served(n, seed))
        report, _ = drift.build_report("diagnosis", "1", reference, current, definition)
        assert report.decision.decided
        assert not report.decision.retrain, report.decision.reasons
        assert len(report.drifting) < definition.drift.max_drifting_features
        assert report.prediction is not None and not report.prediction.drifting


def test_shifted_traffic_drifts_and_asks_for_retraining(reference: monitoring.Profile) -> None:
    definition = _definition()
    current = monitoring.profile_frame(_served(200, seed=1, shift=0.6))
    report, _ = drift.build_report("diagnosis", "1", reference, current, definition)
    assert report.decision.retrain
    drifting = set(report.drifting)
    assert len(drifting) >= 5
    # Only shifted features (or ones strongly correlated with them) drift.
    assert drifting <= set(FEATURES[:10]) | {f for f in FEATURES if f.startswith("worst_")}
    assert "features drift" in report.decision.reasons[0]
    worst = max(report.features, key=lambda f: f.score)
    assert worst.kind == "numeric" and worst.ks is not None and worst.ks > 0.2


def test_per_feature_thresholds_come_from_the_definition(reference: monitoring.Profile) -> None:
    current = monitoring.profile_frame(_served(200, seed=1, shift=0.6, shifted=1))
    name = FEATURES[0]
    strict = drift.build_report("d", "1", reference, current, _definition())[0]
    lax = drift.build_report(
        "d", "1", reference, current, _definition(feature_thresholds={name: 0.99})
    )[0]
    assert name in strict.drifting
    assert name not in lax.drifting


def test_too_few_rows_decide_nothing(reference: monitoring.Profile) -> None:
    current = monitoring.profile_frame(_served(60, seed=2, shift=1.0))
    report, _ = drift.build_report("diagnosis", "1", reference, current, _definition())
    assert not report.decision.decided and not report.decision.retrain
    assert "only 60 served rows" in report.decision.reasons[0]
    empty, _ = drift.build_report("diagnosis", "1", reference, None, _definition())
    assert not empty.decision.decided and empty.rows == 0


def test_missing_values_type_changes_and_absent_columns_drift(
    reference: monitoring.Profile,
) -> None:
    cur = _served(200, seed=3)
    cur[FEATURES[0]] = np.where(np.arange(200) % 2 == 0, np.nan, cur[FEATURES[0]])
    cur[FEATURES[1]] = "n/a"
    cur = cur.drop(columns=[FEATURES[2]])
    report, _ = drift.build_report(
        "diagnosis", "1", reference, monitoring.profile_frame(cur), _definition()
    )
    by = {f.feature: f for f in report.features}
    assert any("missing values up" in r for r in by[FEATURES[0]].reasons)
    assert any("type changed from fractional to string" in r for r in by[FEATURES[1]].reasons)
    assert by[FEATURES[2]].kind == "absent" and by[FEATURES[2]].drifting
    assert report.decision.retrain  # three features drift: the default policy's K
    assert not by[FEATURES[3]].drifting


def _feedback(n: int, accuracy: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    wrong = rng.random(n) >= accuracy
    return pd.DataFrame(
        {
            "target": labels,
            "prediction": np.where(wrong, 1 - labels, labels),
            "request_id": [f"r{i}" for i in range(n)],
            "model_version": "1",
        }
    )


def test_accuracy_drop_on_feedback_triggers_retraining(reference: monitoring.Profile) -> None:
    definition = _definition(max_accuracy_drop=0.05)
    current = monitoring.profile_frame(_served(150, seed=4))
    bad, _ = drift.build_report(
        "diagnosis", "1", reference, current, definition,
        feedback=_feedback(80, accuracy=0.7), holdout_accuracy=0.95,
    )  # fmt: skip
    assert bad.accuracy is not None and bad.accuracy.violated
    assert bad.decision.retrain
    assert any("accuracy on 80 labelled rows" in r for r in bad.decision.reasons)

    good, _ = drift.build_report(
        "diagnosis", "1", reference, current, definition,
        feedback=_feedback(80, accuracy=1.0), holdout_accuracy=0.95,
    )  # fmt: skip
    assert good.accuracy is not None and good.accuracy.accuracy == 1.0
    assert not good.decision.retrain

    # Five labels say nothing either way.
    few = drift.accuracy_check(_feedback(5, accuracy=0.0), definition, 0.95)
    assert few is None


def test_dict_outputs_in_feedback_are_compared_by_label() -> None:
    frame = pd.DataFrame({"target": [1, 0] * 15, "prediction": [{"label": 1, "proba": 0.9}] * 30})
    check = drift.accuracy_check(frame, _definition(), 0.9)
    assert check is not None and check.accuracy == pytest.approx(0.5)


def test_html_report_has_one_plot_per_feature(
    reference: monitoring.Profile, tmp_path: Path
) -> None:
    definition = _definition()
    current = monitoring.profile_frame(_served(200, seed=1, shift=0.6))
    report, comparisons = drift.build_report("diagnosis", "7", reference, current, definition)
    path = drift.write_html(report, comparisons, tmp_path / "r" / "drift.html")
    page = path.read_text()
    assert page.count("<img ") == len(FEATURES) + 1  # every feature and the prediction
    assert "Decision: retrain" in page
    assert FEATURES[0] in page
    metrics = report.metrics()
    assert metrics["drift_features_drifting"] == len(report.drifting)
    assert metrics["drift_retrain"] == 1.0
    assert len(report.table()) == len(FEATURES) + 1


def test_decide_policy_counts() -> None:
    policy = DriftPolicy(max_drifting_features=2, min_rows=10)
    f = drift.FeatureDrift
    two = [f("a", "numeric", "hellinger", 0.3, 0.15, True, reasons=("x",))] * 2
    one = two[:1] + [f("b", "numeric", "hellinger", 0.1, 0.15, False)]
    assert drift.decide(policy, 10, two, None).retrain
    assert not drift.decide(policy, 10, one, None).retrain
    assert not drift.decide(policy, 9, two, None).decided


def test_windows_are_consumed_once_per_decided_check(home: Path) -> None:
    settings = Settings(_env_file=None, home=home, monitoring={"window_rows": 50})
    rows = _served(120, seed=5)
    with SpoolWriter(settings) as writer:
        for _, r in rows.iterrows():
            d = r.to_dict()
            writer.submit("diagnosis", "1", [{k: d[k] for k in FEATURES}], [int(d["prediction"])])
    with Profiler(settings) as profiler:
        profiler.step()
    merged, seqs = drift.collect_windows(settings, "diagnosis", "1")
    assert seqs == [1, 2] and merged is not None and merged.num_rows == 100
    drift.mark_checked(settings, "diagnosis", "1", max(seqs))
    again, seqs2 = drift.collect_windows(settings, "diagnosis", "1")
    assert again is None and seqs2 == []
    assert drift.last_checked(settings, "diagnosis", "2") == 0
