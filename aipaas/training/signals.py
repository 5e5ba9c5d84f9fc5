"""Cross-process nudges through files under ``home/run/signals``.

Promotion and rollback touch a model's marker; serving watches the marker's
mtime (a cheap ``stat``) and reloads at once instead of waiting for its next
registry poll. A file works across processes and restarts with no broker,
and a missed nudge costs only the poll interval.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from aipaas.settings import Settings


def champion_marker(settings: Settings, model: str) -> Path:
    return settings.run_dir / "signals" / f"champion-{model}"


def notify_champion_changed(settings: Settings, model: str) -> None:
    """Tell any serving process on this home that ``champion`` moved."""
    path = champion_marker(settings, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    now = time.time()
    os.utime(path, (now, now))


def marker_mtime(settings: Settings, model: str) -> float:
    """The marker's mtime, 0.0 when nothing was ever signalled."""
    try:
        return champion_marker(settings, model).stat().st_mtime
    except FileNotFoundError:
        return 0.0
