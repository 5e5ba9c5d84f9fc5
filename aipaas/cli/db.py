"""``aipaas db``: the platform database schema (Alembic migrations)."""

from __future__ import annotations
