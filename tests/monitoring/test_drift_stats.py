"""Drift scores and the policy's verdict, on plain numbers and on breast-cancer profiles."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from aipaas.datasets import profiles
from aipaas.exceptions import ConfigurationError
from aipaas.modeldef import DriftPolicy
from aipaas.monitoring import drift_stats
from aipaas.monitoring.drift_stats import FeatureDrift

if TYPE_CHECKING:
    from tests.monitoring.conftest import BreastCancer


def test_hellinger_is_zero_for_equal_and_one_for_disjoint_distributions() -> None:
    assert drift_stats.hellinger([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-7)
    assert drift_stats.hellinger([1, 0], [0, 1]) == pytest.approx(1.0)
    assert drift_stats.hellinger([0, 0], [0, 0]) == 0.0
    assert drift_stats.hellinger([0, 0], [1, 0]) == 1.0


def test_hellinger_correction_removes_sampling_noise_only() -> None:
    p, q = [10, 12, 9, 11], [11, 10, 10, 12]
    raw = drift_stats.hellinger(p, q)
    assert 0 < raw < 0.1
    assert drift_stats.hellinger_corrected(p, q, 42, 43) == 0.0  # within the noise
    far = drift_stats.hellinger_corrected([40, 0, 0, 0], [0, 0, 0, 40], 40, 40)
    # Two occupied bins: the noise term is (2 - 1) / 8 * (1/40 + 1/40).
    assert far == pytest.approx(math.sqrt(1 - 1 / 8 * (2 / 40)))
    assert drift_stats.hellinger_corrected(p, q, 0, 43) == raw


def test_ks_linf_bins_and_chi2() -> None:
    assert drift_stats.ks_statistic([0.1, 0.5, 1.0], [0.3, 0.6, 1.0]) == pytest.approx(0.2)
    assert drift_stats.linf([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4)
    assert [drift_stats.bins_for(n) for n in (10, 100, 250, 10_000)] == [4, 4, 10, 10]
    same = drift_stats.chi2_pvalue([0.5, 0.5], [50, 50])
    skewed = drift_stats.chi2_pvalue([0.5, 0.5], [90, 10])
    assert same is not None and same > 0.9
    assert skewed is not None and skewed < 1e-6
    assert drift_stats.chi2_pvalue([1.0], [10]) is None
    assert drift_stats.chi2_pvalue([0.5, 0.5], [0, 0]) is None


@pytest.mark.parametrize("n", [100, 250])
def test_no_false_alarm_on_unshifted_traffic(cancer: BreastCancer, n: int) -> None:
    definition = cancer.definition()
    for seed in range(5):
        current = cancer.profile(n, seed)
        report, _ = drift_stats.build_report("1", cancer.reference, current, definition)
        assert report.decision.decided
        assert not report.decision.retrain, report.decision.reasons
        assert len(report.drifting) < definition.drift.max_drifting_features
        assert report.prediction is not None and not report.prediction.drifting


def test_shifted_traffic_drifts_and_asks_for_retraining(cancer: BreastCancer) -> None:
    definition = cancer.definition()
    current = cancer.profile(200, seed=1, shift=0.6)
    report, _ = drift_stats.build_report("1", cancer.reference, current, definition)
    assert report.decision.retrain and report.decision.verdict == "retrain"
    assert report.model == "diagnosis" and report.rows == 200
    drifting = set(report.drifting)
    assert len(drifting) >= 5
    # Only shifted features (or ones strongly correlated with them) drift.
    worst_measures = {f for f in cancer.features if f.startswith("worst_")}
    assert drifting <= set(cancer.features[:10]) | worst_measures
    assert "features drifting (policy: 3): " in report.decision.reasons[0]
    worst = max(report.features, key=lambda f: f.score)
    assert worst.kind == "numeric" and worst.ks is not None and worst.ks > 0.2
    assert report.retrain_reason == "drift: " + " ".join(report.decision.reasons)


def test_per_feature_thresholds_come_from_the_definition(cancer: BreastCancer) -> None:
    current = cancer.profile(200, seed=1, shift=0.6, shifted=1)
    name = cancer.features[0]
    strict = drift_stats.build_report("1", cancer.reference, current, cancer.definition())[0]
    lax_definition = cancer.definition(feature_thresholds={name: 0.99})
    lax = drift_stats.build_report("1", cancer.reference, current, lax_definition)[0]
    assert name in strict.drifting
    assert name not in lax.drifting


def test_too_few_rows_decide_nothing(cancer: BreastCancer) -> None:
    current = cancer.profile(60, seed=2, shift=1.0)
    report, _ = drift_stats.build_report("1", cancer.reference, current, cancer.definition())
    assert not report.decision.decided and not report.decision.retrain
    assert report.decision.verdict == "no decision"
    assert "only 60 served rows" in report.decision.reasons[0]
    empty, comparisons = drift_stats.build_report("1", cancer.reference, None, cancer.definition())
    assert not empty.decision.decided and empty.rows == 0
    assert empty.features == () and comparisons == []


def test_missing_values_type_changes_and_absent_columns_drift(cancer: BreastCancer) -> None:
    f = cancer.features
    cur = cancer.served(200, seed=3)
    cur[f[0]] = np.where(np.arange(200) % 2 == 0, np.nan, cur[f[0]])
    cur[f[1]] = "n/a"
    cur = cur.drop(columns=[f[2]])
    report, _ = drift_stats.build_report(
        "1", cancer.reference, profiles.profile_frame(cur), cancer.definition()
    )
    by = {d.feature: d for d in report.features}
    assert any("missing values up" in r for r in by[f[0]].reasons)
    assert any("type changed from fractional to string" in r for r in by[f[1]].reasons)
    assert by[f[2]].kind == "absent" and by[f[2]].drifting
    assert report.decision.retrain  # three features drift: the default policy's K
    assert not by[f[3]].drifting


def test_a_feature_missing_from_the_reference_is_a_configuration_error(
    cancer: BreastCancer,
) -> None:
    current = cancer.profile(150, seed=3)
    reference = profiles.profile_frame(cancer.train.drop(columns=[cancer.features[0]]))
    with pytest.raises(ConfigurationError, match=f"no feature '{cancer.features[0]}'"):
        drift_stats.build_report("1", reference, current, cancer.definition())


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


def test_accuracy_drop_on_feedback_triggers_retraining(cancer: BreastCancer) -> None:
    definition = cancer.definition(max_accuracy_drop=0.05)
    current = cancer.profile(150, seed=4)
    bad, _ = drift_stats.build_report(
        "1", cancer.reference, current, definition,
        feedback=_feedback(80, accuracy=0.7), holdout_accuracy=0.95,
    )  # fmt: skip
    assert bad.accuracy is not None and bad.accuracy.violated
    assert bad.decision.retrain
    assert bad.decision.reasons[0].startswith("accuracy 0.")
    assert "< 0.900 (holdout 0.950 - policy 0.05) on 80 labelled rows" in bad.decision.reasons[0]

    good, _ = drift_stats.build_report(
        "1", cancer.reference, current, definition,
        feedback=_feedback(80, accuracy=1.0), holdout_accuracy=0.95,
    )  # fmt: skip
    assert good.accuracy is not None and good.accuracy.accuracy == 1.0
    assert not good.decision.retrain

    # Five labels say nothing either way.
    assert drift_stats.accuracy_check(_feedback(5, accuracy=0.0), definition, 0.95) is None


def test_accuracy_without_a_holdout_metric_never_violates(cancer: BreastCancer) -> None:
    check = drift_stats.accuracy_check(_feedback(80, accuracy=0.0), cancer.definition(), None)
    assert check is not None and check.accuracy == 0.0
    assert check.drop is None and not check.violated


def test_dict_outputs_in_feedback_are_compared_by_label(cancer: BreastCancer) -> None:
    frame = pd.DataFrame({"target": [1, 0] * 15, "prediction": [{"label": 1, "proba": 0.9}] * 30})
    check = drift_stats.accuracy_check(frame, cancer.definition(), 0.9)
    assert check is not None and check.accuracy == pytest.approx(0.5)


def test_decide_retrain_counts_drifting_features() -> None:
    policy = DriftPolicy(max_drifting_features=2, min_rows=10)
    two = [FeatureDrift("a", "numeric", "hellinger", 0.3, 0.15, True, reasons=("x",))] * 2
    one = two[:1] + [FeatureDrift("b", "numeric", "hellinger", 0.1, 0.15, False)]
    assert drift_stats.decide_retrain(policy, 10, two, None).retrain
    calm = drift_stats.decide_retrain(policy, 10, one, None)
    assert calm.decided and not calm.retrain and calm.verdict == "no retrain"
    assert calm.reasons == ("no drift: 1 of 2 features drifting (policy: 2)", "accuracy not judged")
    assert not drift_stats.decide_retrain(policy, 9, two, None).decided
