"""``aipaas up, aipaas demo``."""

from __future__ import annotations
