"""``aipaas data ...``: ingest, validate, split, version."""

from __future__ import annotations
