"""``aipaas train, aipaas mlflow, aipaas models lineage``."""

from __future__ import annotations
