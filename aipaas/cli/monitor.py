"""``aipaas profiler, aipaas drift``."""

from __future__ import annotations
