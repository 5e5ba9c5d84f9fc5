"""``aipaas audit verify/tail, aipaas usage``."""

from __future__ import annotations
