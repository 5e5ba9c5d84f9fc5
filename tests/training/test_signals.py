"""The champion marker: promotion touches it, serving watches its mtime."""

from __future__ import annotations

import os

from aipaas.settings import Settings
from aipaas.training import signals


def test_a_marker_never_signalled_reads_zero(settings: Settings) -> None:
    assert signals.marker_mtime(settings, "diagnosis") == 0.0


def test_each_notification_moves_the_mtime_of_that_model_only(settings: Settings) -> None:
    signals.notify_champion_changed(settings, "diagnosis")
    first = signals.marker_mtime(settings, "diagnosis")
    assert first > 0 and signals.marker_mtime(settings, "other") == 0.0
    marker = signals.champion_marker(settings, "diagnosis")
    os.utime(marker, (first - 60, first - 60))  # as if signalled a minute ago
    signals.notify_champion_changed(settings, "diagnosis")
    assert signals.marker_mtime(settings, "diagnosis") > first - 60
