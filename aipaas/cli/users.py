"""``aipaas users``: MLflow accounts for the team setup (basic-auth app)."""

from __future__ import annotations
