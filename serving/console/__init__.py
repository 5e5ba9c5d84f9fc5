"""The web console at ``/console``: models, drift, usage, keys, audit, a "try it" panel.

CONTRACT SKELETON (issue 11): :func:`install` adds the console's routes to the
serving app; not built yet, so it adds nothing.
"""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Add the console's routes and static files to ``app``."""
    return None
