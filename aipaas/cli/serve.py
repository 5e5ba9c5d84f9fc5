"""``aipaas serve: the FastAPI serving tier``."""

from __future__ import annotations
