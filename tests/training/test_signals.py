"""The promotion signal: a counter per model in the platform database, bumped by promotion."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aipaas.settings import Settings
from aipaas.training import signals
from tests.conftest import settings_env


@pytest.fixture
def settings(platform_settings: Settings) -> Settings:
    return platform_settings


def test_a_model_never_signalled_reads_zero(settings: Settings) -> None:
    assert signals.champion_generation(settings, "diagnosis") == 0
    assert signals.signalled_at(settings, "diagnosis") == 0.0
    assert signals.champion_generations(settings, ["diagnosis", "other"]) == {
        "diagnosis": 0,
        "other": 0,
    }
    assert signals.champion_generations(settings, []) == {}


def test_each_notification_moves_the_counter_of_that_model_only(settings: Settings) -> None:
    signals.notify_champion_changed(settings, "diagnosis")
    first = signals.signalled_at(settings, "diagnosis")
    assert first > 0 and signals.champion_generation(settings, "diagnosis") == 1
    signals.notify_champion_changed(settings, "diagnosis")
    assert signals.champion_generations(settings, ["diagnosis", "other"]) == {
        "diagnosis": 2,
        "other": 0,
    }
    assert signals.signalled_at(settings, "diagnosis") >= first
    assert signals.marker_mtime(settings, "diagnosis") == signals.signalled_at(
        settings, "diagnosis"
    )


BUMP = """
import sys
from aipaas.settings import get_settings
from aipaas.training import signals
for _ in range(int(sys.argv[1])):
    signals.notify_champion_changed(get_settings(), "diagnosis")
"""


def test_signals_from_processes_on_other_homes_all_count(settings: Settings, tmp_path) -> None:
    """Three processes (three hosts: homes of their own) signal at once: no bump is lost."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUMP, "20"],
            env={**os.environ, **settings_env(settings), "AIPAAS_HOME": str(tmp_path / f"h{i}")},
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert signals.champion_generation(settings, "diagnosis") == 60
