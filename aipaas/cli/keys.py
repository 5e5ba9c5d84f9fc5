"""``aipaas keys create/list/revoke``."""

from __future__ import annotations
