"""``aipaas worker``: a Prefect worker on the platform's work pool (this or another machine)."""

from __future__ import annotations
