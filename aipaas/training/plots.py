"""The evaluation plots people look for in a training run.

Classification: ROC and precision-recall curves (one curve per class,
one-vs-rest, when there are more than two) and the confusion matrix.
Regression: residuals against predictions, and predicted against actual.
Any model that has them: feature importances (``feature_importances_``, or
the size of ``coef_``; for a text pipeline, the tokens).

Each function draws PNGs into a folder and returns their file names, empty
when the plot does not apply (a one-class holdout has no ROC curve).
Matplotlib runs headless (``Agg``): training runs on servers and Ray workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROC = "roc.png"
PR = "pr.png"
CONFUSION = "confusion_matrix.png"
RESIDUALS = "residuals.png"
PREDICTED_VS_ACTUAL = "predicted_vs_actual.png"
IMPORTANCE = "feature_importance.png"
TOP_FEATURES = 20
SIZE = (4, 4)
DPI = 80


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def binary_curves(
    y_true: np.ndarray,
    positive_proba: np.ndarray,
    positive: Any,
    out_dir: Path,
    *,
    auc: float = float("nan"),
) -> list[str]:
    """The ROC and PR curves of a binary classifier; empty if the holdout has one class."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    yb = (y_true == positive).astype(int)
    if not 0 < yb.sum() < len(yb):
        return []
    plt = _pyplot()
    fpr, tpr, _ = roc_curve(yb, positive_proba)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.plot(fpr, tpr, label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    _save(plt, fig, out_dir / ROC)
    prec, rec, _ = precision_recall_curve(yb, positive_proba)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.plot(rec, prec)
    ax.set(xlabel="recall", ylabel="precision", title=f"PR ({positive})")
    _save(plt, fig, out_dir / PR)
    return [ROC, PR]


def one_vs_rest_curves(
    y_true: np.ndarray, proba: np.ndarray, classes: Sequence[Any], out_dir: Path
) -> list[str]:
    """ROC and PR curves of a multiclass classifier, one per class against the rest.

    A class absent from the holdout (or the only one present) has no curve;
    with no class left, nothing is drawn.
    """
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    usable = [(i, c) for i, c in enumerate(classes) if 0 < int((y_true == c).sum()) < len(y_true)]
    if not usable:
        return []
    plt = _pyplot()
    roc_fig, roc_ax = plt.subplots(figsize=SIZE)
    pr_fig, pr_ax = plt.subplots(figsize=SIZE)
    for i, c in usable:
        yb = (y_true == c).astype(int)
        fpr, tpr, _ = roc_curve(yb, proba[:, i])
        roc_ax.plot(fpr, tpr, label=f"{c} (AUC {auc(fpr, tpr):.3f})")
        prec, rec, _ = precision_recall_curve(yb, proba[:, i])
        pr_ax.plot(rec, prec, label=str(c))
    roc_ax.plot([0, 1], [0, 1], "--", color="grey")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one vs rest")
    roc_ax.legend(loc="lower right", fontsize="small")
    pr_ax.set(xlabel="recall", ylabel="precision", title="PR, one vs rest")
    pr_ax.legend(loc="lower left", fontsize="small")
    _save(plt, roc_fig, out_dir / ROC)
    _save(plt, pr_fig, out_dir / PR)
    return [ROC, PR]


def regression_plots(y_true: np.ndarray, pred: np.ndarray, out_dir: Path) -> list[str]:
    """Residuals against predictions, and predicted against actual with the ideal line."""
    plt = _pyplot()
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(pred, dtype=float)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.scatter(p, y - p, s=8, alpha=0.6)
    ax.axhline(0.0, linestyle="--", color="grey")
    ax.set(xlabel="predicted", ylabel="actual - predicted", title="residuals")
    _save(plt, fig, out_dir / RESIDUALS)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.scatter(y, p, s=8, alpha=0.6)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], "--", color="grey")
    ax.set(xlabel="actual", ylabel="predicted", title="predicted vs actual")
    _save(plt, fig, out_dir / PREDICTED_VS_ACTUAL)
    return [RESIDUALS, PREDICTED_VS_ACTUAL]


def feature_importance(
    importances: Sequence[tuple[str, float]], out_dir: Path, *, top: int = TOP_FEATURES
) -> list[str]:
    """The ``top`` most important features (or tokens) as horizontal bars, largest on top."""
    ranked = sorted(importances, key=lambda kv: abs(kv[1]), reverse=True)[:top]
    if not ranked:
        return []
    plt = _pyplot()
    names = [n for n, _ in reversed(ranked)]
    values = [v for _, v in reversed(ranked)]
    fig, ax = plt.subplots(figsize=(5, max(2.5, 0.25 * len(ranked) + 1)))
    ax.barh(range(len(ranked)), values)
    ax.set_yticks(range(len(ranked)), names, fontsize="small")
    ax.set(xlabel="importance", title=f"feature importance (top {len(ranked)})")
    _save(plt, fig, out_dir / IMPORTANCE)
    return [IMPORTANCE]


def confusion_matrix(
    confusion: Sequence[Sequence[int]], classes: Sequence[Any], out_dir: Path
) -> str:
    """The confusion matrix, counts written in each cell."""
    plt = _pyplot()
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.imshow(cm, cmap="Blues")
    ticks = range(len(classes))
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=30)
    ax.set_yticks(ticks, [str(c) for c in classes])
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center")
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    _save(plt, fig, out_dir / CONFUSION)
    return CONFUSION


def _save(plt: Any, fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
