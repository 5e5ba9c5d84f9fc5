"""Scoring a model: metrics, per-class breakdown, predict latency, the report.

One metric implementation serves the search (cross-validation inside each Ray
Tune trial), the holdout evaluation after the refit (prediction spread over
Ray tasks, one per shard) and promotion (:func:`score_version` scores any
registered version on the same holdout), so the numbers compare.

For a binary classifier the positive class is the last of the sorted labels
(``classes_[1]``; for the demo ``malignant``).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from aipaas.exceptions import ConfigurationError
from aipaas.modeldef import ModelDefinition

CLASSIFICATION_METRICS = ("roc_auc", "pr_auc", "accuracy", "f1", "precision", "recall", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")


def check_metrics(definition: ModelDefinition) -> None:
    """Refuse a definition whose metrics this module cannot compute."""
    known = CLASSIFICATION_METRICS if definition.task == "classification" else REGRESSION_METRICS
    wanted = [definition.metric, *definition.metrics]
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise ConfigurationError(
            f"model {definition.name!r}: unknown {definition.task} metric(s) {unknown}; "
            f"choose from {list(known)}"
        )


def compute_metrics(
    task: str,
    metrics: Sequence[str],
    y_true: ArrayLike,
    pred: ArrayLike,
    proba: np.ndarray | None = None,
    classes: ArrayLike | None = None,
) -> dict[str, float]:
    """The named metrics; ``proba`` columns follow ``classes`` (sorted labels)."""
    from sklearn import metrics as skm

    y = np.asarray(y_true)
    p = np.asarray(pred)
    out: dict[str, float] = {}
    if task == "regression":
        for m in metrics:
            if m == "rmse":
                out[m] = float(np.sqrt(skm.mean_squared_error(y, p)))
            elif m == "mae":
                out[m] = float(skm.mean_absolute_error(y, p))
            elif m == "r2":
                out[m] = float(skm.r2_score(y, p))
        return out
    labels = (
        np.asarray(classes).tolist()
        if classes is not None
        else sorted(set(y.tolist()) | set(p.tolist()))
    )
    binary = len(labels) == 2
    average = "binary" if binary else "macro"
    pos = labels[-1] if binary else None
    for m in metrics:
        if m == "accuracy":
            out[m] = float(skm.accuracy_score(y, p))
        elif m in ("f1", "precision", "recall"):
            fn = {"f1": skm.f1_score, "precision": skm.precision_score, "recall": skm.recall_score}[
                m
            ]
            kw: dict[str, Any] = {"average": average, "zero_division": 0}
            if binary:
                kw["pos_label"] = pos
            out[m] = float(fn(y, p, **kw))
        elif m in ("roc_auc", "pr_auc", "log_loss"):
            if proba is None:
                continue  # a model without probabilities: threshold metrics only
            if len(set(y.tolist())) < 2 and m != "log_loss":
                out[m] = float("nan")
                continue
            if m == "log_loss":
                out[m] = float(skm.log_loss(y, proba, labels=labels))
            elif binary:
                yb = (y == pos).astype(int)
                score = proba[:, 1]
                fn2 = skm.roc_auc_score if m == "roc_auc" else skm.average_precision_score
                out[m] = float(fn2(yb, score))
            elif m == "roc_auc":
                out[m] = float(skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels))
            else:
                yb = np.stack([(y == c).astype(int) for c in labels], axis=1)
                out[m] = float(skm.average_precision_score(yb, proba, average="macro"))
    return out


def predict_outputs(model: Any, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None, list[Any]]:
    """Predictions, class probabilities (or None) and the class labels of ``model``."""
    pred = np.asarray(model.predict(X))
    proba = None
    raw = getattr(model, "classes_", None)
    classes: list[Any] = [] if raw is None else list(raw)
    if hasattr(model, "predict_proba") and classes:
        proba = np.asarray(model.predict_proba(X))
    return pred, proba, classes


def cross_validate(
    build: Callable[[dict[str, Any]], Any],
    params: dict[str, Any],
    X: pd.DataFrame,
    y: pd.Series,
    *,
    task: str,
    metric: str,
    folds: int,
    seed: int,
) -> list[float]:
    """The metric on each fold (stratified for classification) of the training data."""
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter = (
        StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        if task == "classification"
        else KFold(n_splits=folds, shuffle=True, random_state=seed)
    )
    scores = []
    for train_idx, test_idx in splitter.split(X, y):
        model = build(dict(params))
        model.fit(X.iloc[train_idx], y.iloc[train_idx])
        Xt = X.iloc[test_idx]
        pred, proba, classes = predict_outputs(model, Xt)
        got = compute_metrics(task, [metric], y.iloc[test_idx], pred, proba, classes)
        if metric not in got:
            raise ConfigurationError(
                f"metric {metric!r} needs predict_proba, which the model lacks"
            )
        scores.append(got[metric])
    return scores


@dataclass
class Evaluation:
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
) -> Evaluation:
    """Score ``model`` on the holdout, predicting in parallel Ray tasks, one per shard.

    AUC is not additive over shards, so the tasks return predictions and the
    driver computes the metrics on all of them together. Ray must be up
    (:func:`aipaas.training.raycluster.ensure_ray`).
    """
    import ray

    X = holdout[list(definition.features)]
    y = holdout[definition.target].to_numpy()
    n = max(1, min(shards, len(X)))
    model_ref = ray.put(model)
    remote = ray.remote(num_cpus=1)(_predict_shard)
    parts = np.array_split(np.arange(len(X)), n)
    results = ray.get([remote.remote(model_ref, X.iloc[idx]) for idx in parts])
    pred = np.concatenate([r[0] for r in results])
    proba = None if results[0][1] is None else np.concatenate([r[1] for r in results])
    classes = results[0][2]
    return _evaluation(definition, y, pred, proba, classes, shards=n)


def _evaluation(
    definition: ModelDefinition,
    y: np.ndarray,
    pred: np.ndarray,
    proba: np.ndarray | None,
    classes: list[Any],
    *,
    shards: int,
) -> Evaluation:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    metrics = compute_metrics(definition.task, definition.metrics, y, pred, proba, classes)
    ev = Evaluation(
        task=definition.task, metrics=metrics, rows=len(y), shards=shards, y_true=y, pred=pred
    )
    if definition.task == "classification":
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


def measure_latency(
    predict_fn: Callable[[Any], Any],
    row: Any,
    batch: Any,
    *,
    repeats: int = 200,
    batch_repeats: int = 20,
) -> dict[str, float]:
    """p50/p99 of a one-row predict and of a batch predict, in milliseconds.

    The first calls are discarded as warm-up. Promotion's latency gate reads
    ``latency_p99_ms``.
    """

    def timings(x: Any, n: int) -> np.ndarray:
        for _ in range(3):
            predict_fn(x)
        out = np.empty(n)
        for i in range(n):
            t0 = time.perf_counter()
            predict_fn(x)
            out[i] = (time.perf_counter() - t0) * 1000.0
        return out

    one = timings(row, repeats)
    many = timings(batch, batch_repeats)
    return {
        "latency_p50_ms": float(np.percentile(one, 50)),
        "latency_p99_ms": float(np.percentile(one, 99)),
        "latency_batch_p50_ms": float(np.percentile(many, 50)),
        "latency_batch_p99_ms": float(np.percentile(many, 99)),
        "latency_batch_rows": float(len(batch)),
    }


def load_native_model(model_uri: str) -> Any:
    """The model in its own library's type, so ``predict_proba`` is available.

    MLflow's pyfunc wrapper only exposes ``predict``; ranking metrics need
    probabilities. Falls back to pyfunc for any other flavour.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from aipaas.exceptions import ModelNotFoundError

    try:
        flavors = mlflow.models.get_model_info(model_uri).flavors
    except (MlflowException, OSError) as err:
        raise ModelNotFoundError(f"cannot read model {model_uri}: {err}") from err
    if "lightgbm" in flavors:
        return mlflow.lightgbm.load_model(model_uri)
    if "sklearn" in flavors:
        return mlflow.sklearn.load_model(model_uri)
    return mlflow.pyfunc.load_model(model_uri)


def score_version(
    model_uri: str, definition: ModelDefinition, holdout: pd.DataFrame
) -> dict[str, float]:
    """The definition's metrics for any logged or registered model on ``holdout``.

    Promotion calls this for challenger and champion on the same holdout.
    The caller has pointed MLflow at the registry (``aipaas.training.registry.connect``).
    """
    model = load_native_model(model_uri)
    X = prepare_features(definition, holdout)
    y = holdout[definition.target].to_numpy()
    pred, proba, classes = predict_outputs(model, X)
    return compute_metrics(definition.task, definition.metrics, y, pred, proba, classes)


def prepare_features(definition: ModelDefinition, df: pd.DataFrame) -> pd.DataFrame:
    """The feature columns, typed as the signature records them (float, or string ``text``)."""
    missing = [c for c in definition.features if c not in df.columns]
    if missing:
        raise ConfigurationError(
            f"model {definition.name!r}: columns {missing} missing from the data "
            f"(has {list(df.columns)[:10]}...)"
        )
    X = df[list(definition.features)].copy()
    if definition.is_text:
        return X.astype({"text": str})
    numeric = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c])]
    return X.astype({c: "float64" for c in numeric})


# --------------------------------------------------------------------------- report


def write_report(
    evaluation: Evaluation,
    latency: dict[str, float],
    out_dir: Path,
    *,
    title: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """The evaluation report (markdown and HTML) with its plots, into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    ev = evaluation
    if ev.task == "classification" and ev.y_true is not None:
        if ev.proba is not None and len(ev.classes) == 2:
            from sklearn.metrics import precision_recall_curve, roc_curve

            yb = (ev.y_true == ev.classes[-1]).astype(int)
            if 0 < yb.sum() < len(yb):
                fpr, tpr, _ = roc_curve(yb, ev.proba[:, 1])
                fig, ax = plt.subplots(figsize=(4, 4))
                ax.plot(fpr, tpr, label=f"AUC {ev.metrics.get('roc_auc', float('nan')):.3f}")
                ax.plot([0, 1], [0, 1], "--", color="grey")
                ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
                ax.legend(loc="lower right")
                fig.tight_layout()
                fig.savefig(out_dir / "roc.png", dpi=80)
                plt.close(fig)
                prec, rec, _ = precision_recall_curve(yb, ev.proba[:, 1])
                fig, ax = plt.subplots(figsize=(4, 4))
                ax.plot(rec, prec)
                ax.set(xlabel="recall", ylabel="precision", title=f"PR ({ev.classes[-1]})")
                fig.tight_layout()
                fig.savefig(out_dir / "pr.png", dpi=80)
                plt.close(fig)
                plots += ["roc.png", "pr.png"]
        if ev.confusion:
            cm = np.asarray(ev.confusion)
            fig, ax = plt.subplots(figsize=(4, 4))
            ax.imshow(cm, cmap="Blues")
            ticks = range(len(ev.classes))
            ax.set_xticks(ticks, [str(c) for c in ev.classes], rotation=30)
            ax.set_yticks(ticks, [str(c) for c in ev.classes])
            for i in range(cm.shape[0]):
                for j in range(cm.shape[1]):
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center")
            ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
            fig.tight_layout()
            fig.savefig(out_dir / "confusion_matrix.png", dpi=80)
            plt.close(fig)
            plots.append("confusion_matrix.png")
        pd.DataFrame(ev.per_class).to_csv(out_dir / "per_class.csv", index=False)

    summary = {
        "metrics": ev.metrics,
        "latency_ms": latency,
        "rows": ev.rows,
        "shards": ev.shards,
        "per_class": ev.per_class,
        "confusion": ev.confusion,
        "classes": [str(c) for c in ev.classes],
        **(extra or {}),
    }
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))

    lines = [
        f"# {title}",
        "",
        f"Holdout: {ev.rows} rows, scored in {ev.shards} parallel shards.",
        "",
    ]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in ev.metrics.items()]
    lines += ["", "## Predict latency (ms)", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in latency.items()]
    if ev.per_class:
        lines += ["", "## Per class", "", "| class | precision | recall | f1 | support |"]
        lines += ["|---|---|---|---|---|"]
        lines += [
            f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} "
            f"| {r['support']} |"
            for r in ev.per_class
        ]
    for key, value in (extra or {}).items():
        lines += ["", f"## {key}", "", "```", json.dumps(value, indent=2, default=str), "```"]
    lines += ["", *[f"![{p}]({p})" for p in plots]]
    md = "\n".join(lines) + "\n"
    (out_dir / "report.md").write_text(md)
    (out_dir / "report.html").write_text(_html(md, out_dir, plots, title))
    return out_dir / "report.md"


def _html(md: str, out_dir: Path, plots: list[str], title: str) -> str:
    """A self-contained HTML page (plots embedded) so the MLflow UI shows it as one file."""
    import html

    body = [f"<h1>{html.escape(title)}</h1>", "<pre>"]
    body += [html.escape(line) for line in md.splitlines() if not line.startswith("![")]
    body.append("</pre>")
    for p in plots:
        data = base64.b64encode((out_dir / p).read_bytes()).decode()
        body.append(f'<img alt="{p}" src="data:image/png;base64,{data}">')
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body>{''.join(body)}</body></html>"
    )
