"""The evaluation plots: ROC and precision-recall curves, the confusion matrix.

Each function draws one PNG into a folder and returns its file name, or None
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
