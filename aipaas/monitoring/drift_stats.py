"""Drift statistics and the policy's verdict: pure functions of plain numbers.

A drift check compares served traffic with the champion's training data
feature by feature, looks at the prediction distribution against the
reference target, at missing values and type changes, and at accuracy on
labelled feedback against the holdout metric; the model definition's
:class:`~aipaas.modeldef.DriftPolicy` then decides whether to retrain, with
its reasons. Everything here is computed from values, so it is tested on
plain numbers and tiny profiles; the I/O of a check is :mod:`.drift`, its
publication :mod:`.drift_report`.

Scores, all in [0, 1] so one threshold reads the same everywhere:

- numeric features: the Hellinger distance between the two distributions
  on the reference's decile bins (the KS statistic is reported beside it);
- categorical features (strings, booleans, integers with few values): the
  L-infinity distance between value frequencies (a chi-square p-value is
  reported beside it);
- a missing-value fraction up by more than the threshold, a changed type or
  an absent column also make a feature drift;
- text features (a column profiled as text, see
  :mod:`aipaas.datasets.profiles`) are judged by four statistics, each its
  own row named ``<feature>.<statistic>`` with its own threshold
  (``feature_thresholds`` takes these names): ``length`` (Hellinger on the
  character-length deciles, like a number), ``tokens`` (Hellinger between
  the frequencies of the reference's most frequent tokens plus "other",
  corrected for sampling noise), ``oov`` (the out-of-vocabulary rate
  against the training vocabulary in excess of the rate ordinary traffic
  shows, the Good-Turing estimate) and ``empty`` (the share of empty or
  whitespace-only inputs in excess of the training data's). A text feature
  drifts when any of its statistics does.

The policy counts drifting *features*: at least ``max_drifting_features``,
or every feature when the model has fewer (a one-feature text model
retrains when its one feature drifts).

The numbers come from :mod:`aipaas.datasets.profiles`: no whylogs type
reaches this module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pandas as pd

from aipaas.datasets import profiles
from aipaas.datasets.profiles import ColumnComparison, Profile
from aipaas.exceptions import ConfigurationError
from aipaas.modeldef import DriftPolicy, ModelDefinition
from aipaas.monitoring.spool import PREDICTION

# The accuracy check needs at least this many labelled rows (or min_rows // 4).
MIN_LABELLED_ROWS = 10

_NUMERIC_FAMILY = {"integral", "fractional", "boolean"}


@dataclass(frozen=True)
class FeatureDrift:
    """One column's comparison, as the report shows it."""

    feature: str
    kind: str  # numeric | categorical | absent
    method: str  # hellinger | linf | -
    score: float
    threshold: float
    drifting: bool
    ks: float | None = None
    chi2_pvalue: float | None = None
    reference_missing: float = 0.0
    current_missing: float = 0.0
    reference_type: str = ""
    current_type: str = ""
    reasons: tuple[str, ...] = ()
    # The model feature this row judges ("" : ``feature`` itself); the rows of a
    # text feature's statistics name it, and the policy counts features, not rows.
    source: str = ""

    @property
    def of_feature(self) -> str:
        return self.source or self.feature

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AccuracyCheck:
    """Accuracy of served predictions on labelled feedback, against the holdout's."""

    labelled_rows: int
    accuracy: float
    holdout_accuracy: float | None
    drop: float | None
    max_drop: float
    violated: bool
    # Which labels were judged: the policy's window, after the labels a retrain
    # already learnt from (epoch seconds; None: no retrain has consumed any).
    window_rows: int = 0
    window_hours: float | None = None
    consumed_through: float | None = None

    @property
    def floor(self) -> float | None:
        """The accuracy below which the policy retrains: holdout less ``max_drop``."""
        return None if self.holdout_accuracy is None else self.holdout_accuracy - self.max_drop

    @property
    def reason(self) -> str:
        """The comparison as a person reads it: ``accuracy 0.850 < 0.920 (holdout ...)``."""
        n = f"on {self.labelled_rows} labelled rows"
        if self.holdout_accuracy is None or self.floor is None:
            return f"accuracy {self.accuracy:.3f} {n} (no holdout accuracy to compare with)"
        sign = "<" if self.violated else ">="
        return (
            f"accuracy {self.accuracy:.3f} {sign} {self.floor:.3f} "
            f"(holdout {self.holdout_accuracy:.3f} - policy {self.max_drop:g}) {n}"
        )

    @property
    def window(self) -> str:
        """Which labels the accuracy was computed on, for the report."""
        parts = [f"the last {self.window_rows} labelled rows at most"]
        if self.window_hours is not None:
            parts.append(f"labelled in the last {self.window_hours:g} h")
        if self.consumed_through is not None:
            at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.consumed_through))
            parts.append(f"after {at} (labels before it went to an earlier retrain)")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DriftDecision:
    """The policy's verdict. ``decided`` is False when there was too little traffic."""

    decided: bool
    retrain: bool
    reasons: tuple[str, ...]
    # Why, in one short line: what asked for the retrain (accuracy, features or
    # both), "no drift: ...", or why nothing was decided. Empty in records an
    # older aipaas wrote: :attr:`why` falls back to the first reason.
    cause: str = ""

    @property
    def verdict(self) -> str:
        """``retrain``, ``no retrain`` or ``no decision``: what a person reads first."""
        if self.retrain:
            return "retrain"
        return "no retrain" if self.decided else "no decision"

    @property
    def why(self) -> str:
        return self.cause or (self.reasons[0] if self.reasons else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DriftReport:
    """One check of one champion version: every score and the verdict."""

    model: str
    version: str
    rows: int
    windows: tuple[int, ...]
    features: tuple[FeatureDrift, ...]
    prediction: FeatureDrift | None
    accuracy: AccuracyCheck | None
    decision: DriftDecision
    created_at: float = field(default_factory=time.time)
    html_path: str | None = None
    # Where every host reads the check (see :mod:`.drift_store`): its MLflow
    # run, and the HTML report's artifact URI; or why it is only local.
    mlflow_run: str | None = None
    report_uri: str | None = None
    store_error: str | None = None

    @property
    def summary(self) -> str:
        """The check in one line, as the history, ``aipaas demo`` and ``aipaas monitor`` show it."""
        return summary_line(self.version, self.windows, self.rows, self.drifting, self.decision)

    @property
    def drifting(self) -> list[str]:
        return [f.feature for f in self.features if f.drifting]

    @property
    def retrain_reason(self) -> str:
        """Why this check asks for a retrain, as the retrain history records it."""
        return "drift: " + " ".join(self.decision.reasons)

    def table(self) -> list[dict[str, Any]]:
        """One row per feature (and the prediction), for a Prefect table artifact."""
        rows = [*self.features, *([self.prediction] if self.prediction else [])]
        return [
            {
                "feature": f.feature,
                "kind": f.kind,
                "method": f.method,
                "score": round(f.score, 4),
                "threshold": f.threshold,
                "drifting": f.drifting,
                "ks": None if f.ks is None else round(f.ks, 4),
                "missing": f"{f.reference_missing:.1%} -> {f.current_missing:.1%}",
                "why": "; ".join(f.reasons),
            }
            for f in rows
        ]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drifting"] = self.drifting
        d["summary"] = self.summary
        return d


def summary_line(
    version: str,
    windows: Sequence[int],
    rows: int,
    drifting: Sequence[str],
    decision: DriftDecision,
) -> str:
    """One check as a line: windows, rows, drifting features, the verdict and its reason.

    ``v1 windows [3, 4]: 200 rows, 0 features drifting -> retrain: accuracy
    0.850 < 0.920 (holdout 0.970 - policy 0.05) on 300 labelled rows``: a
    retrain always says what asked for it.
    """
    names = ", ".join(drifting[:4]) + (" ..." if len(drifting) > 4 else "")
    head = (
        f"v{version} windows {list(windows)}: {rows} rows, "
        f"{len(drifting)} features drifting{f' ({names})' if names else ''}"
    )
    if decision.retrain:
        return f"{head} -> retrain: {decision.why}"
    if decision.decided:
        return f"{head} -> no drift"
    return f"{head} -> {decision.why or 'no decision'}"


# -- scores -------------------------------------------------------------------


def hellinger(p: Sequence[float], q: Sequence[float]) -> float:
    """Hellinger distance between two discrete distributions (each renormalised)."""
    sp, sq = sum(p), sum(q)
    if sp <= 0 or sq <= 0:
        return 0.0 if sp == sq else 1.0
    bc = sum(math.sqrt((a / sp) * (b / sq)) for a, b in zip(p, q, strict=True))
    return math.sqrt(max(0.0, 1.0 - bc))


def hellinger_corrected(p: Sequence[float], q: Sequence[float], n_p: int, n_q: int) -> float:
    """Hellinger distance less the part sampling noise alone produces.

    Between two samples of one distribution on k bins, the squared distance
    averages about (k - 1) / 8 * (1/n_p + 1/n_q): 0.12 for 100 served rows on
    10 bins, enough to raise false alarms. Subtracting it keeps one threshold
    meaningful whether a check sees a hundred rows or a hundred thousand.
    """
    h = hellinger(p, q)
    if n_p <= 0 or n_q <= 0:
        return h
    k = sum(1 for a, b in zip(p, q, strict=True) if a > 0 or b > 0)
    noise = max(k - 1, 0) / 8.0 * (1.0 / n_p + 1.0 / n_q)
    return math.sqrt(max(0.0, h * h - noise))


def bins_for(rows: int) -> int:
    """Fewer bins for fewer rows: about 25 rows per bin, between 4 and 10."""
    return max(4, min(10, rows // 25))


def ks_statistic(cdf_a: Sequence[float], cdf_b: Sequence[float]) -> float:
    return max((abs(a - b) for a, b in zip(cdf_a, cdf_b, strict=True)), default=0.0)


def linf(p: Sequence[float], q: Sequence[float]) -> float:
    return max((abs(a - b) for a, b in zip(p, q, strict=True)), default=0.0)


def chi2_pvalue(reference_freq: Sequence[float], current_counts: Sequence[float]) -> float | None:
    """Goodness of fit of the current counts to the reference frequencies."""
    from scipy.stats import chisquare

    n = sum(current_counts)
    if n <= 0 or len(reference_freq) < 2:
        return None
    # A little smoothing: a value unseen in training must not divide by zero.
    eps = 0.5 / max(n, 1)
    ref = [f + eps for f in reference_freq]
    total = sum(ref)
    expected = [n * f / total for f in ref]
    return float(chisquare(current_counts, expected).pvalue)


def score_column(cmp: ColumnComparison, threshold: float, name: str | None = None) -> FeatureDrift:
    """Score one aligned column and say whether (and why) it drifts."""
    ref, cur = cmp.reference, cmp.current
    reasons: list[str] = []
    ks = p = None
    if cmp.kind == "numeric":
        method = "hellinger"
        score = hellinger_corrected(
            cmp.reference_hist,
            cmp.current_hist,
            ref.count - ref.missing,
            cur.count - cur.missing,
        )
        ks = ks_statistic(cmp.reference_cdf, cmp.current_cdf)
    else:
        method = "linf"
        score = linf(cmp.reference_freq, cmp.current_freq)
        present = cur.count - cur.missing
        p = chi2_pvalue(cmp.reference_freq, [f * present for f in cmp.current_freq])
    if score > threshold:
        reasons.append(f"{method} {score:.3f} > {threshold:g}")
    missing_up = cur.missing_fraction - ref.missing_fraction
    if missing_up > threshold:
        reasons.append(
            f"missing values up from {ref.missing_fraction:.1%} to {cur.missing_fraction:.1%}"
        )
    rt, ct = ref.dominant_type, cur.dominant_type
    if ct != "none" and rt != ct and not {rt, ct} <= _NUMERIC_FAMILY:
        reasons.append(f"type changed from {rt} to {ct}")
    return FeatureDrift(
        feature=name or cmp.column,
        kind=cmp.kind,
        method=method,
        score=score,
        threshold=threshold,
        drifting=bool(reasons),
        ks=ks,
        chi2_pvalue=p,
        reference_missing=ref.missing_fraction,
        current_missing=cur.missing_fraction,
        reference_type=rt,
        current_type=ct,
        reasons=tuple(reasons),
    )


def score_text(
    comparisons: Sequence[ColumnComparison], policy: DriftPolicy, feature: str
) -> list[FeatureDrift]:
    """Score the aligned statistics of one text feature (:func:`profiles.compare_text`)."""
    out = []
    for cmp in comparisons:
        threshold = policy.feature_thresholds.get(cmp.column, policy.default_threshold)
        statistic = cmp.column.rpartition(".")[2]
        if statistic == profiles.TEXT_LENGTH:
            scored = score_column(cmp, threshold)
        elif statistic == profiles.TEXT_TOKENS:
            scored = _text_score(
                cmp, threshold, "hellinger",
                hellinger_corrected(cmp.reference_freq, cmp.current_freq,
                                    cmp.reference.count, cmp.current.count),
            )  # fmt: skip
        else:  # oov, empty: the share of the second category, above the reference's
            excess = max(0.0, cmp.current_freq[1] - cmp.reference_freq[1])
            scored = _text_score(cmp, threshold, "excess", excess)
        out.append(replace(scored, source=feature))
    return out


def _text_score(cmp: ColumnComparison, threshold: float, method: str, score: float) -> FeatureDrift:
    reasons = (f"{method} {score:.3f} > {threshold:g}",) if score > threshold else ()
    return FeatureDrift(
        feature=cmp.column,
        kind="text",
        method=method,
        score=score,
        threshold=threshold,
        drifting=bool(reasons),
        reference_type="string",
        current_type="string",
        reasons=reasons,
    )


def _absent(name: str, threshold: float) -> FeatureDrift:
    return FeatureDrift(
        name, "absent", "-", 1.0, threshold, True, reasons=("column absent from served rows",)
    )


def compare_profiles(
    reference: Profile, current: Profile, definition: ModelDefinition
) -> tuple[list[FeatureDrift], FeatureDrift | None, list[ColumnComparison]]:
    """Every feature of the definition, and the prediction against the reference target."""
    policy = definition.drift
    features: list[FeatureDrift] = []
    comparisons: list[ColumnComparison] = []
    ref_cols, cur_cols = set(reference.columns), set(current.columns)
    for name in definition.features:
        threshold = policy.feature_thresholds.get(name, policy.default_threshold)
        if name not in ref_cols:
            raise ConfigurationError(
                f"the reference profile of {definition.name!r} has no feature {name!r}: "
                "retrain so that training logs a profile of the current features"
            )
        if name not in cur_cols:
            features.append(_absent(name, threshold))
            continue
        bins = bins_for(current.num_rows)
        if reference.text(name) is not None and current.text(name) is not None:
            text = profiles.compare_text(reference, current, name, bins=bins)
            comparisons.extend(text)
            features.extend(score_text(text, policy, name))
            continue
        cmp = profiles.compare(reference, current, name, bins=bins)
        comparisons.append(cmp)
        features.append(score_column(cmp, threshold))
    prediction = None
    if definition.target in ref_cols and PREDICTION in cur_cols:
        cmp = profiles.compare(reference, current, definition.target, PREDICTION)
        comparisons.append(cmp)
        prediction = score_column(cmp, policy.default_threshold, name=PREDICTION)
    return features, prediction, comparisons


# -- accuracy on feedback -----------------------------------------------------


def min_labelled_rows(policy: DriftPolicy) -> int:
    """How many labels the accuracy check needs before it says anything."""
    return max(MIN_LABELLED_ROWS, policy.min_rows // 4)


def accuracy_window(
    feedback: pd.DataFrame,
    policy: DriftPolicy,
    *,
    consumed_through: float | None = None,
    now: float | None = None,
) -> pd.DataFrame:
    """The labels the accuracy check judges: recent, and none a retrain already learnt from.

    Labels up to ``consumed_through`` (epoch seconds) went into a retrain an
    earlier check started: judging them again would repeat that check's
    verdict on evidence already acted on. Of the rest, those labelled in the
    last ``accuracy_window_hours``, at most the newest ``accuracy_window_rows``.
    A frame without ``labelled_at`` is taken as labelled now, in order.
    """
    if feedback is None or feedback.empty:
        return feedback
    frame = feedback
    if "labelled_at" in frame:
        at = pd.to_datetime(frame["labelled_at"], utc=True)
        keep = pd.Series(True, index=frame.index)
        if consumed_through is not None:
            keep &= at > pd.Timestamp(consumed_through, unit="s", tz="UTC")
        if policy.accuracy_window_hours is not None:
            now = time.time() if now is None else now
            oldest = now - policy.accuracy_window_hours * 3600.0
            keep &= at >= pd.Timestamp(oldest, unit="s", tz="UTC")
        frame = frame[keep.to_numpy()]
        order = pd.to_datetime(frame["labelled_at"], utc=True).argsort(kind="stable")
        frame = frame.iloc[order.to_numpy()]
    return frame.tail(policy.accuracy_window_rows)


def accuracy_check(
    feedback: pd.DataFrame,
    definition: ModelDefinition,
    holdout_accuracy: float | None,
    *,
    consumed_through: float | None = None,
    now: float | None = None,
) -> AccuracyCheck | None:
    """Accuracy of served predictions on the policy's window of labelled feedback.

    None when there are too few labels in the window (:func:`accuracy_window`).
    """
    policy = definition.drift
    if definition.task != "classification" or feedback is None or feedback.empty:
        return None
    if definition.target not in feedback or PREDICTION not in feedback:
        return None
    recent = accuracy_window(feedback, policy, consumed_through=consumed_through, now=now)
    pairs = recent[[definition.target, PREDICTION]].dropna()
    if len(pairs) < min_labelled_rows(policy):
        return None
    predicted = pairs[PREDICTION].map(label_of)
    correct = [same_label(a, b) for a, b in zip(pairs[definition.target], predicted, strict=True)]
    accuracy = sum(correct) / len(correct)
    drop = None if holdout_accuracy is None else holdout_accuracy - accuracy
    return AccuracyCheck(
        labelled_rows=len(pairs),
        accuracy=accuracy,
        holdout_accuracy=holdout_accuracy,
        drop=drop,
        max_drop=policy.max_accuracy_drop,
        violated=drop is not None and drop > policy.max_accuracy_drop,
        window_rows=policy.accuracy_window_rows,
        window_hours=policy.accuracy_window_hours,
        consumed_through=consumed_through,
    )


def label_of(output: Any) -> Any:
    if isinstance(output, dict):
        for key in ("prediction", "label", "class", "output"):
            if key in output:
                return output[key]
    return output


def same_label(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


# -- the verdict --------------------------------------------------------------


def decide_retrain(
    policy: DriftPolicy,
    rows: int,
    features: Sequence[FeatureDrift],
    accuracy: AccuracyCheck | None,
    *,
    accuracy_note: str | None = None,
) -> DriftDecision:
    """Apply the drift policy; every verdict names its reason.

    Features are counted, not rows: the statistics of one text feature drift
    as one feature. A retrain needs :func:`needed_features` of them, or an
    accuracy below the holdout's less ``max_accuracy_drop``. The decision's
    ``cause`` says which: a retrain asked for by accuracy alone never reads
    as "0 features drifting". ``accuracy_note`` says why accuracy was not
    judged (too few labels in the window), when it was not.
    """
    if rows < policy.min_rows:
        why = f"only {rows} served rows since the last check (< min_rows {policy.min_rows})"
        return DriftDecision(
            decided=False, retrain=False, reasons=(why,), cause=f"no decision: {why}"
        )
    drifting = [f for f in features if f.drifting]
    judged = len({f.of_feature for f in features})
    drifting_features = list(dict.fromkeys(f.of_feature for f in drifting))
    k = needed_features(policy, judged)
    policy_k = f"(policy: {_policy_k(policy, k)})"
    count = f"{len(drifting_features)} features drifting {policy_k}"
    by_features = bool(drifting) and len(drifting_features) >= k
    by_accuracy = accuracy is not None and accuracy.violated
    causes: list[str] = []
    reasons: list[str] = []
    if by_accuracy and accuracy is not None:
        causes.append(accuracy.reason)
        reasons.append(accuracy.reason)
    if by_features:
        listed = ", ".join(f"{f.feature} ({'; '.join(f.reasons)})" for f in drifting[:8])
        more = f" and {len(drifting) - 8} more" if len(drifting) > 8 else ""
        causes.append(count)
        reasons.append(f"{count}: {listed}{more}")
    if causes:
        if not by_features:  # what the features said, beside the accuracy that decided
            reasons.append(f"{len(drifting_features)} of {judged} features drifting {policy_k}")
        if not by_accuracy:
            reasons.append(accuracy.reason if accuracy is not None else _no_accuracy(accuracy_note))
        return DriftDecision(
            decided=True, retrain=True, reasons=tuple(reasons), cause="; ".join(causes)
        )
    ok = f"no drift: {len(drifting_features)} of {judged} features drifting {policy_k}"
    second = accuracy.reason if accuracy is not None else _no_accuracy(accuracy_note)
    return DriftDecision(decided=True, retrain=False, reasons=(ok, second), cause=ok)


def _no_accuracy(note: str | None) -> str:
    return f"accuracy not judged: {note}" if note else "accuracy not judged"


def needed_features(policy: DriftPolicy, features: int) -> int:
    """How many drifting features ask for a retrain: ``max_drifting_features``, or all
    of them when the model has fewer (a one-feature model could never reach 3)."""
    return max(1, min(policy.max_drifting_features, features))


def _policy_k(policy: DriftPolicy, k: int) -> str:
    if k == policy.max_drifting_features:
        return str(k)
    return f"{k}, every feature; max_drifting_features is {policy.max_drifting_features}"


def build_report(
    version: str,
    reference: Profile,
    current: Profile | None,
    definition: ModelDefinition,
    *,
    windows: Sequence[int] = (),
    feedback: pd.DataFrame | None = None,
    holdout_accuracy: float | None = None,
    consumed_through: float | None = None,
    now: float | None = None,
) -> tuple[DriftReport, list[ColumnComparison]]:
    """The whole comparison and verdict for one champion version of ``definition``.

    Returns the report and the aligned columns it was scored on (what the
    HTML report plots).
    """
    rows = current.num_rows if current is not None else 0
    features: list[FeatureDrift] = []
    prediction = None
    comparisons: list[ColumnComparison] = []
    if current is not None:
        features, prediction, comparisons = compare_profiles(reference, current, definition)
    accuracy = None
    if feedback is not None:
        accuracy = accuracy_check(
            feedback, definition, holdout_accuracy, consumed_through=consumed_through, now=now
        )
    note = _accuracy_note(definition, feedback, consumed_through) if accuracy is None else None
    report = DriftReport(
        model=definition.name,
        version=version,
        rows=rows,
        windows=tuple(windows),
        features=tuple(features),
        prediction=prediction,
        accuracy=accuracy,
        decision=decide_retrain(definition.drift, rows, features, accuracy, accuracy_note=note),
    )
    return report, comparisons


def _accuracy_note(
    definition: ModelDefinition, feedback: pd.DataFrame | None, consumed_through: float | None
) -> str:
    """Why there is no accuracy check, in words a person can act on."""
    if definition.task != "classification":
        return f"a {definition.task} model"
    policy = definition.drift
    since = " since the last retrain started" if consumed_through is not None else ""
    if feedback is None or feedback.empty:
        return f"no labelled feedback on this version{since}"
    n = len(accuracy_window(feedback, policy, consumed_through=consumed_through))
    return (
        f"{n} labelled rows in the window{since}, fewer than the {min_labelled_rows(policy)} needed"
    )
