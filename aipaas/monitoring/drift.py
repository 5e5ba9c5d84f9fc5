"""Drift: served traffic against the champion's training data, and the policy's verdict.

A check merges the profile windows serving closed since the last check,
compares them feature by feature with the champion's reference profile (the
whylogs profile training logged as ``reference_profile/profile.bin``), looks
at the prediction distribution against the reference target, at missing
values and type changes, and at accuracy on labelled feedback against the
holdout metric. The model definition's :class:`~aipaas.modeldef.DriftPolicy`
then decides whether to retrain, with its reasons.

Scores, all in [0, 1] so one threshold reads the same everywhere:

- numeric features: the Hellinger distance between the two distributions
  on the reference's decile bins (the KS statistic is reported beside it);
- categorical features (strings, booleans, integers with few values): the
  L-infinity distance between value frequencies (a chi-square p-value is
  reported beside it);
- a missing-value fraction up by more than the threshold, a changed type or
  an absent column also make a feature drift.

Statistics are computed here from plain numbers that :mod:`aipaas.datasets.profiles`
extracts from the profiles: no whylogs type reaches this module.
"""

from __future__ import annotations

import base64
import fcntl
import html
import io
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from aipaas.datasets import profiles as monitoring
from aipaas.datasets.profiles import ColumnComparison, Profile
from aipaas.exceptions import ConfigurationError, ModelNotFoundError
from aipaas.modeldef import DriftPolicy, ModelDefinition
from aipaas.monitoring import spool
from aipaas.settings import Settings

REFERENCE_ARTIFACT = "reference_profile/profile.bin"
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AccuracyCheck:
    labelled_rows: int
    accuracy: float
    holdout_accuracy: float | None
    drop: float | None
    max_drop: float
    violated: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DriftDecision:
    """The policy's verdict. ``decided`` is False when there was too little traffic."""

    decided: bool
    retrain: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DriftReport:
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

    @property
    def drifting(self) -> list[str]:
        return [f.feature for f in self.features if f.drifting]

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: one score per feature plus the summary."""
        out = {f"drift_{f.feature}": f.score for f in self.features}
        out["drift_rows"] = float(self.rows)
        out["drift_features_drifting"] = float(len(self.drifting))
        out["drift_retrain"] = float(self.decision.retrain)
        if self.prediction is not None:
            out["drift_prediction"] = self.prediction.score
        if self.accuracy is not None:
            out["feedback_accuracy"] = self.accuracy.accuracy
            out["feedback_labelled_rows"] = float(self.accuracy.labelled_rows)
        return out

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
        return d


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
            features.append(
                FeatureDrift(
                    name,
                    "absent",
                    "-",
                    1.0,
                    threshold,
                    True,
                    reasons=("column absent from served rows",),
                )  # fmt: skip
            )
            continue
        cmp = monitoring.compare(reference, current, name, bins=bins_for(current.num_rows))
        comparisons.append(cmp)
        features.append(score_column(cmp, threshold))
    prediction = None
    if definition.target in ref_cols and spool.PREDICTION in cur_cols:
        cmp = monitoring.compare(reference, current, definition.target, spool.PREDICTION)
        comparisons.append(cmp)
        prediction = score_column(cmp, policy.default_threshold, name=spool.PREDICTION)
    return features, prediction, comparisons


def accuracy_check(
    feedback: pd.DataFrame,
    definition: ModelDefinition,
    holdout_accuracy: float | None,
) -> AccuracyCheck | None:
    """Accuracy of served predictions on labelled feedback; None when too few labels."""
    policy = definition.drift
    if definition.task != "classification" or feedback is None or feedback.empty:
        return None
    if definition.target not in feedback or "prediction" not in feedback:
        return None
    pairs = feedback[[definition.target, "prediction"]].dropna()
    if len(pairs) < max(MIN_LABELLED_ROWS, policy.min_rows // 4):
        return None
    predicted = pairs["prediction"].map(_label_of)
    correct = [_same(a, b) for a, b in zip(pairs[definition.target], predicted, strict=True)]
    accuracy = sum(correct) / len(correct)
    drop = None if holdout_accuracy is None else holdout_accuracy - accuracy
    return AccuracyCheck(
        labelled_rows=len(pairs),
        accuracy=accuracy,
        holdout_accuracy=holdout_accuracy,
        drop=drop,
        max_drop=policy.max_accuracy_drop,
        violated=drop is not None and drop > policy.max_accuracy_drop,
    )


def _label_of(output: Any) -> Any:
    if isinstance(output, dict):
        for key in ("prediction", "label", "class", "output"):
            if key in output:
                return output[key]
    return output


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def decide(
    policy: DriftPolicy,
    rows: int,
    features: Sequence[FeatureDrift],
    accuracy: AccuracyCheck | None,
) -> DriftDecision:
    """Apply the drift policy; every verdict carries its reasons."""
    if rows < policy.min_rows:
        return DriftDecision(
            decided=False,
            retrain=False,
            reasons=(
                f"only {rows} served rows since the last check (< min_rows {policy.min_rows})",
            ),
        )
    reasons: list[str] = []
    drifting = [f for f in features if f.drifting]
    if len(drifting) >= policy.max_drifting_features:
        listed = ", ".join(f"{f.feature} ({'; '.join(f.reasons)})" for f in drifting[:8])
        more = f" and {len(drifting) - 8} more" if len(drifting) > 8 else ""
        reasons.append(
            f"{len(drifting)} features drift (policy: {policy.max_drifting_features}): "
            f"{listed}{more}"
        )
    if accuracy is not None and accuracy.violated:
        reasons.append(
            f"accuracy on {accuracy.labelled_rows} labelled rows is {accuracy.accuracy:.3f}, "
            f"{accuracy.drop:.3f} below the holdout's {accuracy.holdout_accuracy:.3f} "
            f"(policy: {policy.max_accuracy_drop})"
        )
    if reasons:
        return DriftDecision(decided=True, retrain=True, reasons=tuple(reasons))
    k = policy.max_drifting_features
    ok = [f"{len(drifting)} of {len(features)} features drift (policy: {k})"]
    if accuracy is not None:
        ok.append(f"accuracy {accuracy.accuracy:.3f} on {accuracy.labelled_rows} labelled rows")
    return DriftDecision(decided=True, retrain=False, reasons=tuple(ok))


def build_report(
    model: str,
    version: str,
    reference: Profile,
    current: Profile | None,
    definition: ModelDefinition,
    *,
    windows: Sequence[int] = (),
    feedback: pd.DataFrame | None = None,
    holdout_accuracy: float | None = None,
) -> tuple[DriftReport, list[ColumnComparison]]:
    """The whole comparison and verdict for one champion version."""
    rows = current.num_rows if current is not None else 0
    features: list[FeatureDrift] = []
    prediction = None
    comparisons: list[ColumnComparison] = []
    if current is not None:
        features, prediction, comparisons = compare_profiles(reference, current, definition)
    accuracy = (
        accuracy_check(feedback, definition, holdout_accuracy) if feedback is not None else None
    )
    decision = decide(definition.drift, rows, features, accuracy)
    report = DriftReport(
        model=model,
        version=version,
        rows=rows,
        windows=tuple(windows),
        features=tuple(features),
        prediction=prediction,
        accuracy=accuracy,
        decision=decision,
    )
    return report, comparisons


# -- the HTML report -----------------------------------------------------------


def _plot(cmp: ColumnComparison, drift: FeatureDrift) -> str:
    """One PNG (base64) of reference against current for a column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.4), dpi=80)
    try:
        if cmp.kind == "numeric":
            ax.step(cmp.points, cmp.reference_cdf, where="post", label="reference", color="#1f77b4")
            ax.step(cmp.points, cmp.current_cdf, where="post", label="current", color="#d62728")
            ax.set_ylabel("CDF")
        else:
            cats = cmp.categories[:20]
            xs = range(len(cats))
            ax.bar([x - 0.2 for x in xs], cmp.reference_freq[:20], width=0.4, label="reference")
            ax.bar([x + 0.2 for x in xs], cmp.current_freq[:20], width=0.4, label="current")
            ax.set_xticks(list(xs), cats, rotation=45, fontsize=7)
            ax.set_ylabel("frequency")
        colour = "#d62728" if drift.drifting else "#333333"
        ax.set_title(f"{drift.feature}: {drift.method} {drift.score:.3f}", fontsize=9, color=colour)
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_html(report: DriftReport, comparisons: Sequence[ColumnComparison], path: Path) -> Path:
    """A self-contained HTML page: verdict, table, one plot per feature."""
    by_name = {f.feature: f for f in report.features}
    if report.prediction is not None:
        by_name[spool.PREDICTION] = report.prediction
    esc = html.escape
    verdict = (
        "retrain" if report.decision.retrain else "no retrain" if report.decision.decided
        else "no decision"
    )  # fmt: skip
    rows_html = "".join(
        "<tr class='{cls}'>{cells}</tr>".format(
            cls="drift" if r["drifting"] else "",
            cells="".join(f"<td>{esc(str(v))}</td>" for v in r.values()),
        )
        for r in report.table()
    )
    head = "".join(f"<th>{esc(k)}</th>" for k in (report.table() or [{"feature": ""}])[0])
    plots = []
    for cmp in comparisons:
        name = spool.PREDICTION if cmp.current_column == spool.PREDICTION else cmp.column
        drift = by_name.get(name)
        if drift is not None:
            plots.append(f"<img alt='{esc(name)}' src='data:image/png;base64,{_plot(cmp, drift)}'>")
    acc = ""
    if report.accuracy is not None:
        a = report.accuracy
        holdout = "unknown" if a.holdout_accuracy is None else f"{a.holdout_accuracy:.3f}"
        acc = (
            f"<p>Accuracy on {a.labelled_rows} labelled rows: {a.accuracy:.3f} "
            f"(holdout {holdout})</p>"
        )
    reasons = "".join(f"<li>{esc(r)}</li>" for r in report.decision.reasons)
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>drift {esc(report.model)} v{esc(report.version)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}} tr.drift{{background:#fdd}}
img{{margin:4px;border:1px solid #eee}}</style></head><body>
<h1>Drift: {esc(report.model)} version {esc(report.version)}</h1>
<p>{time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report.created_at))};
{report.rows} served rows from windows {esc(", ".join(map(str, report.windows)) or "-")}.</p>
<h2>Decision: {verdict}</h2><ul>{reasons}</ul>
{acc}<table><tr>{head}</tr>{rows_html}</table>
<h2>Reference (training) against current (served)</h2>{"".join(plots)}
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


# -- state and I/O for a check --------------------------------------------------


def _state_path(settings: Settings, model: str) -> Path:
    return settings.profiles_dir / model / "drift-state.json"


def last_checked(settings: Settings, model: str, version: str) -> int:
    """The last window sequence number of this version a decided check consumed."""
    path = _state_path(settings, model)
    if not path.is_file():
        return 0
    return int(json.loads(path.read_text()).get(str(version), {}).get("last_seq", 0))


def mark_checked(settings: Settings, model: str, version: str, last_seq: int) -> None:
    path = _state_path(settings, model)
    state = json.loads(path.read_text()) if path.is_file() else {}
    state[str(version)] = {"last_seq": int(last_seq), "checked_at": time.time()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def collect_windows(
    settings: Settings, model: str, version: str
) -> tuple[Profile | None, list[int]]:
    """Merge the closed windows of this version not yet consumed by a decided check."""
    windows = spool.list_windows(
        settings, model, version, after_seq=last_checked(settings, model, version)
    )
    merged = monitoring.merge_profiles(spool.load_window(w) for w in windows)
    return merged, [w.seq for w in windows]


def load_reference(settings: Settings, run_id: str | None, model: str, version: str) -> Profile:
    """The champion's reference profile, downloaded from its training run."""
    import mlflow

    from aipaas.training import registry

    if not run_id:
        raise ModelNotFoundError(
            f"{model} version {version} has no training run to hold its reference profile"
        )
    registry.connect(settings)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=tmp
            )
        except mlflow.exceptions.MlflowException as err:
            raise ModelNotFoundError(
                f"{model} version {version} (run {run_id}) has no {REFERENCE_ARTIFACT}: "
                "it was not trained by `aipaas train`; retrain it"
            ) from err
        return monitoring.read_profile(Path(local))


def report_path(settings: Settings, report: DriftReport) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(report.created_at))
    return settings.reports_dir / "drift" / report.model / f"v{report.version}-{stamp}.html"


def record(settings: Settings, report: DriftReport) -> Path:
    """Append the verdict to the model's drift history (JSON lines)."""
    path = settings.reports_dir / "drift" / report.model / "history.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "at": report.created_at,
        "model": report.model,
        "version": report.version,
        "rows": report.rows,
        "windows": list(report.windows),
        "drifting": report.drifting,
        "decision": report.decision.to_dict(),
        "html": report.html_path,
    }
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    return path


def history(settings: Settings, model: str) -> list[dict[str, Any]]:
    path = settings.reports_dir / "drift" / model / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def log_to_mlflow(settings: Settings, report: DriftReport) -> str:
    """Log the report's numbers as a run in the platform's experiment; returns its id.

    The run is tagged with the model and version (``aipaas.model``,
    ``aipaas.drift_version``) so the MLflow UI lists a version's drift checks
    side by side; the HTML report rides along as an artifact.
    """
    import mlflow

    from aipaas.training import registry, tags

    registry.connect(settings)
    registry.ensure_experiment(settings)
    run_tags = {
        tags.MODEL_DEFINITION: report.model,
        "aipaas.drift_version": report.version,
        "aipaas.drift_retrain": str(report.decision.retrain).lower(),
        "aipaas.kind": "drift-check",
    }
    with mlflow.start_run(run_name=f"drift-{report.model}-v{report.version}", tags=run_tags) as run:
        mlflow.log_metrics(report.metrics())
        mlflow.log_dict(report.to_dict(), "drift/report.json")
        if report.html_path and Path(report.html_path).is_file():
            mlflow.log_artifact(report.html_path, artifact_path="drift")
        return str(run.info.run_id)


def check(settings: Settings, model: str) -> DriftReport:
    """Run one drift check of the champion now: compare, write the HTML, record.

    Windows are marked consumed only when the check decided something, so a
    quiet hour's rows add up until there are ``min_rows`` of them. Checks of
    one model are serialised (two window closes start two drift runs): each
    window is judged once, so one shift starts one retrain.
    """
    lock_path = _state_path(settings, model).with_name("drift.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _check_locked(settings, model)


def _check_locked(settings: Settings, model: str) -> DriftReport:
    from aipaas.modeldef import load_definition
    from aipaas.training import registry, tags

    definition = load_definition(model, settings.models_dir)
    registry.connect(settings)
    champion = registry.get_alias(model, tags.CHAMPION)
    if champion is None:
        raise ModelNotFoundError(
            f"{model!r} has no champion yet: run `aipaas run lifecycle {model}`"
        )
    current, seqs = collect_windows(settings, model, champion.version)
    reference = load_reference(settings, champion.run_id, model, champion.version)
    holdout = registry.run_metrics(champion.run_id or "").get("holdout_accuracy")
    feedback = champion_feedback(settings, model, champion.version)
    report, comparisons = build_report(
        model, champion.version, reference, current, definition,
        windows=seqs, feedback=feedback, holdout_accuracy=holdout,
    )  # fmt: skip
    path = write_html(report, comparisons, report_path(settings, report))
    report = _with_html(report, path)
    record(settings, report)
    if report.decision.decided and seqs:
        mark_checked(settings, model, champion.version, max(seqs))
    return report


def champion_feedback(settings: Settings, model: str, version: str) -> pd.DataFrame:
    """Labelled feedback on the predictions of this version (empty when there is none)."""
    from aipaas.inference import feedback

    frame = feedback.labelled_rows(settings, model)
    if frame.empty or "model_version" not in frame:
        return frame
    return frame[frame["model_version"].astype(str) == str(version)]


def _with_html(report: DriftReport, path: Path) -> DriftReport:
    from dataclasses import replace

    return replace(report, html_path=str(path))
