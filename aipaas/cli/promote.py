"""``aipaas promote, rollback, models list/show, run lifecycle/retrain``."""

from __future__ import annotations
