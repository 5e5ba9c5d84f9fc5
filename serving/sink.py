"""The hand-off from serving to profiling.

Profiling a batch holds the GIL for milliseconds, so it never runs on the
request path: serving hands each answered request's rows and outputs to a
:class:`RowSink`, whose ``submit`` must return in microseconds (append to a
buffer or a spool file that another process profiles).
"""

from __future__ import annotations

from typing import Any, Protocol


class RowSink(Protocol):
    def submit(
        self, model: str, version: str, rows: list[dict[str, Any]], outputs: list[Any]
    ) -> None:
        """Accept answered rows; must not block."""


class NoopSink:
    """The default when no profiler is wired in."""

    def submit(
        self, model: str, version: str, rows: list[dict[str, Any]], outputs: list[Any]
    ) -> None:
        return None
