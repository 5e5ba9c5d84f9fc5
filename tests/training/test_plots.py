"""The evaluation plots: drawn when they apply, skipped when they cannot be."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aipaas.training import plots


def test_binary_curves_draw_roc_and_pr(tmp_path: Path) -> None:
    y = np.array(["benign", "malignant"] * 10)
    drawn = plots.binary_curves(y, np.linspace(0, 1, 20), "malignant", tmp_path, auc=0.9)
    assert drawn == [plots.ROC, plots.PR]
    assert all((tmp_path / name).read_bytes().startswith(b"\x89PNG") for name in drawn)


def test_a_one_class_holdout_has_no_curves(tmp_path: Path) -> None:
    y = np.array(["benign"] * 5)
    assert plots.binary_curves(y, np.linspace(0, 1, 5), "malignant", tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_confusion_matrix_is_a_png(tmp_path: Path) -> None:
    name = plots.confusion_matrix([[3, 1], [0, 4]], ["a", "b"], tmp_path / "out")
    assert (tmp_path / "out" / name).read_bytes().startswith(b"\x89PNG")
