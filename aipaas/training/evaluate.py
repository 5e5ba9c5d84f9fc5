"""Scoring a model on the holdout, and the report people read in MLflow.

The holdout evaluation after the refit spreads prediction over Ray's warm
trial workers, one shard each; :func:`score_version` scores any registered version on a holdout
for promotion, and :func:`score_slices` on each slice the definition names.
All compute their numbers with :mod:`aipaas.training.metrics`, so they compare
with the search's. The plots are :mod:`aipaas.training.plots`, the latency
:mod:`aipaas.training.latency`.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aipaas.exceptions import ConfigurationError
from aipaas.files import atomic_write, atomic_write_json
from aipaas.modeldef import ModelDefinition, Slice
from aipaas.training import plots, registry, tags
from aipaas.training.gates import SliceScore
from aipaas.training.latency import Latency
from aipaas.training.metrics import (
    compute_metrics,
    predict_outputs,
    prepare_features,
    undefined_metrics,
)

# (model_uri, definition, holdout) -> {metric: value}: how promotion scores a version.
VersionScorer = Callable[[str, ModelDefinition, pd.DataFrame], Mapping[str, float]]

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PER_CLASS_CSV = "per_class.csv"
SUMMARY_JSON = "metrics.json"


@dataclass
class HoldoutEvaluation:
    """A model scored on the holdout: what the report and MLflow show."""

    task: str
    metrics: dict[str, float]
    rows: int
    shards: int
    classes: list[Any] = field(default_factory=list)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    y_true: np.ndarray | None = None
    pred: np.ndarray | None = None
    proba: np.ndarray | None = None


def _predict_shard(model: Any, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None, list[Any]]:
    return predict_outputs(model, X)


def evaluate_holdout(
    model: Any, definition: ModelDefinition, holdout: pd.DataFrame, *, shards: int = 2
) -> HoldoutEvaluation:
    """Score ``model`` on the holdout, predicting the shards in parallel on Ray.

    The shards go to the search's warm trial workers
    (:mod:`aipaas.training.trial_workers`: one per CPU, libraries imported),
    not to new Ray tasks, whose worker processes would each import
    scikit-learn and LightGBM first (10 s of a small training's evaluation
    step here). A shard whose worker died is predicted here in the driver.
    AUC is not additive over shards, so the workers return predictions and the
    driver computes the metrics on all of them together. Ray must be up
    (:func:`aipaas.training.raycluster.ensure_ray`).
    """
    import ray
    from ray.exceptions import RayActorError

    from aipaas.training import trial_workers

    X = holdout[list(definition.features)]
    y = holdout[definition.target].to_numpy()
    n = max(1, min(shards, len(X)))
    model_ref = ray.put(model)
    parts = [X.iloc[idx] for idx in np.array_split(np.arange(len(X)), n)]
    workers = trial_workers.pool().take(n)
    calls = [
        workers[i % len(workers)].handle.run.remote(_predict_shard, model_ref, part)
        for i, part in enumerate(parts)
    ]
    results = []
    for call, part in zip(calls, parts, strict=True):
        try:
            results.append(ray.get(call))
        except RayActorError:  # the worker died: its shard is predicted here
            results.append(_predict_shard(model, part))
    pred = np.concatenate([r[0] for r in results])
    proba = None if results[0][1] is None else np.concatenate([r[1] for r in results])
    return holdout_evaluation(definition, y, pred, proba, results[0][2], shards=n)


def holdout_evaluation(
    definition: ModelDefinition,
    y: np.ndarray,
    pred: np.ndarray,
    proba: np.ndarray | None,
    classes: list[Any],
    *,
    shards: int = 1,
) -> HoldoutEvaluation:
    """The evaluation of given predictions: metrics, and per class for a classifier."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    metrics = compute_metrics(definition.task, definition.metrics, y, pred, proba, classes)
    ev = HoldoutEvaluation(
        task=definition.task, metrics=metrics, rows=len(y), shards=shards, y_true=y, pred=pred
    )
    if definition.task != "classification":
        return ev
    labels = list(classes) or sorted(set(y.tolist()) | set(pred.tolist()))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    ev.classes = labels
    ev.proba = proba
    ev.per_class = [
        {
            "class": str(c),
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, c in enumerate(labels)
    ]
    ev.confusion = confusion_matrix(y, pred, labels=labels).tolist()
    return ev


def score_version(
    model_uri: str, definition: ModelDefinition, holdout: pd.DataFrame
) -> dict[str, float]:
    """The definition's metrics for any logged or registered model on ``holdout``.

    Promotion calls this for challenger and champion on the same holdout.
    The caller has pointed MLflow at the registry (``aipaas.training.registry.connect``).
    """
    _, model = registry.load_native(model_uri)
    return score_model(model, definition, holdout)


def score_model(model: Any, definition: ModelDefinition, holdout: pd.DataFrame) -> dict[str, float]:
    """The definition's metrics for a loaded model on ``holdout``."""
    X = prepare_features(definition, holdout)
    y = holdout[definition.target].to_numpy()
    pred, proba, classes = predict_outputs(model, X)
    return compute_metrics(definition.task, definition.metrics, y, pred, proba, classes)


def version_scorer() -> VersionScorer:
    """:func:`score_version` that loads each model once, for one promotion.

    Promotion scores a version on the holdout and again on each slice; loading
    it from the registry each time would cost more than the predictions.
    """
    loaded: dict[str, Any] = {}

    def score(
        model_uri: str, definition: ModelDefinition, holdout: pd.DataFrame
    ) -> dict[str, float]:
        if model_uri not in loaded:
            loaded[model_uri] = registry.load_native(model_uri)[1]
        return score_model(loaded[model_uri], definition, holdout)

    return score


# --------------------------------------------------------------------------- slices


def slice_frames(definition: ModelDefinition, holdout: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows of ``holdout`` in each slice of the definition's gates, by slice name.

    Raises:
        ConfigurationError: a slice names a column the holdout does not have,
            or takes a range of a column that is not numeric.
    """
    return {s.name: holdout[_slice_mask(definition, s, holdout)] for s in definition.gates.slices}


def _slice_mask(definition: ModelDefinition, s: Slice, holdout: pd.DataFrame) -> pd.Series:
    where = f"model {definition.name!r}, slice {s.name!r}"
    if s.column not in holdout.columns:
        shown = ", ".join(map(str, list(holdout.columns)[:12]))
        more = ", ..." if len(holdout.columns) > 12 else ""
        raise ConfigurationError(
            f"{where}: the holdout has no column {s.column!r} (it has {shown}{more}); "
            "fix the slice in the model definition"
        )
    column = holdout[s.column]
    if s.values is not None:
        return column.isin(list(s.values))
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise ConfigurationError(
            f"{where}: range {s.range} needs a numeric column; {s.column!r} holds {column.dtype}; "
            "name its values with values=(...) instead"
        )
    low, high = s.range or (None, None)
    mask = pd.Series(True, index=holdout.index)
    if low is not None:
        mask &= column >= low
    if high is not None:
        mask &= column < high
    return mask


def score_slices(
    definition: ModelDefinition,
    holdout: pd.DataFrame,
    score: Callable[[pd.DataFrame], Mapping[str, float]],
) -> tuple[SliceScore, ...]:
    """One version's metrics on each slice of ``holdout``, by ``score`` (rows -> metrics).

    A slice with fewer rows than ``gates.slice_min_rows`` is not scored, and
    a metric its rows cannot define (AUC on one class) is left out with why
    (:func:`aipaas.training.metrics.undefined_metrics`): the gates say so
    rather than read a number that means nothing.

    Raises:
        ConfigurationError: a slice does not fit the holdout (:func:`slice_frames`).
    """
    least = definition.gates.slice_min_rows
    out = []
    for name, rows in slice_frames(definition, holdout).items():
        n = len(rows)
        if n < least:
            out.append(SliceScore(name, n, unmeasured=f"not enough rows ({n} < {least})"))
            continue
        metrics = {k: float(v) for k, v in score(rows).items()}
        undefined = undefined_metrics(definition.task, list(metrics), rows[definition.target])
        kept = {k: v for k, v in metrics.items() if k not in undefined}
        out.append(SliceScore(name, n, kept, undefined=undefined))
    return tuple(out)


# --------------------------------------------------------------------------- report


def write_report(
    evaluation: HoldoutEvaluation,
    latency: Latency,
    out_dir: Path,
    *,
    title: str,
    extra: dict[str, Any] | None = None,
    importance: list[tuple[str, float]] | None = None,
) -> Path:
    """The evaluation report (markdown and HTML) with its plots, into ``out_dir``.

    ``importance`` (:func:`feature_importance`) adds the feature-importance plot.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = evaluation
    drawn = _plots(ev, out_dir, importance or [])
    if ev.task == "classification" and ev.y_true is not None:
        pd.DataFrame(ev.per_class).to_csv(out_dir / PER_CLASS_CSV, index=False)
    latency_ms = {**latency.metrics(), tags.LATENCY_BATCH_ROWS: float(latency.batch_rows)}
    summary = {
        "metrics": ev.metrics,
        "latency_ms": latency_ms,
        "rows": ev.rows,
        "shards": ev.shards,
        "per_class": ev.per_class,
        "confusion": ev.confusion,
        "classes": [str(c) for c in ev.classes],
        **(extra or {}),
    }
    atomic_write_json(out_dir / SUMMARY_JSON, summary)
    md = _markdown(ev, latency_ms, drawn, title=title, extra=extra or {})
    atomic_write(out_dir / REPORT_MD, md)
    atomic_write(out_dir / REPORT_HTML, _html(md, out_dir, drawn, title))
    return out_dir / REPORT_MD


def _plots(ev: HoldoutEvaluation, out_dir: Path, importance: list[tuple[str, float]]) -> list[str]:
    drawn: list[str] = []
    if ev.task == "classification" and ev.y_true is not None:
        if ev.proba is not None and len(ev.classes) == 2:
            auc = ev.metrics.get("roc_auc", float("nan"))
            drawn += plots.binary_curves(
                ev.y_true, ev.proba[:, 1], ev.classes[-1], out_dir, auc=auc
            )
        elif ev.proba is not None and len(ev.classes) > 2:
            drawn += plots.one_vs_rest_curves(ev.y_true, ev.proba, ev.classes, out_dir)
        if ev.confusion:
            drawn.append(plots.confusion_matrix(ev.confusion, ev.classes, out_dir))
    elif ev.y_true is not None and ev.pred is not None and len(ev.y_true):
        drawn += plots.regression_plots(ev.y_true, ev.pred, out_dir)
    drawn += plots.feature_importance(importance, out_dir)
    return drawn


def feature_importance(model: Any, features: Sequence[str]) -> list[tuple[str, float]]:
    """What the model weighs, by name: empty for a model that does not say.

    ``feature_importances_`` (trees) as is; ``coef_`` (linear models) by its
    size, averaged over classes. For a pipeline, the last step's weights are
    named by the steps before it (``get_feature_names_out``): the tokens of a
    TF-IDF text pipeline, without the column prefix.
    """
    names: list[str] = list(features)
    estimator = model
    steps = getattr(model, "steps", None)
    if steps:
        estimator = steps[-1][1]
        if len(steps) > 1 and hasattr(model[:-1], "get_feature_names_out"):
            try:
                names = [str(n) for n in model[:-1].get_feature_names_out()]
            except (AttributeError, ValueError, TypeError):
                names = list(features)  # a step that cannot name its outputs
    values: np.ndarray | None = None
    if hasattr(estimator, "feature_importances_"):
        values = np.asarray(estimator.feature_importances_, dtype=float).ravel()
    elif hasattr(estimator, "coef_"):
        coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=float))
        values = np.abs(coef).mean(axis=0)
    if values is None or len(values) != len(names):
        return []
    clean = [n.split("__", 1)[1] if "__" in n else n for n in names]
    return list(zip(clean, (float(v) for v in values), strict=True))


def _markdown(
    ev: HoldoutEvaluation,
    latency_ms: dict[str, float],
    drawn: list[str],
    *,
    title: str,
    extra: dict[str, Any],
) -> str:
    lines = [f"# {title}", "", f"Holdout: {ev.rows} rows, scored in {ev.shards} parallel shards."]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in ev.metrics.items()]
    lines += ["", "## Predict latency (ms)", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in latency_ms.items()]
    if ev.per_class:
        lines += ["", "## Per class", "", "| class | precision | recall | f1 | support |"]
        lines += ["|---|---|---|---|---|"]
        lines += [
            f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} "
            f"| {r['support']} |"
            for r in ev.per_class
        ]
    for key, value in extra.items():
        lines += ["", f"## {key}", "", "```", json.dumps(value, indent=2, default=str), "```"]
    lines += ["", *[f"![{p}]({p})" for p in drawn]]
    return "\n".join(lines) + "\n"


def _html(md: str, out_dir: Path, drawn: list[str], title: str) -> str:
    """A self-contained HTML page (plots embedded) so the MLflow UI shows it as one file."""
    body = [f"<h1>{html.escape(title)}</h1>", "<pre>"]
    body += [html.escape(line) for line in md.splitlines() if not line.startswith("![")]
    body.append("</pre>")
    for p in drawn:
        data = base64.b64encode((out_dir / p).read_bytes()).decode()
        body.append(f'<img alt="{p}" src="data:image/png;base64,{data}">')
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body>{''.join(body)}</body></html>"
    )
