"""``aipaas promote --canary/--shadow`` and ``aipaas canary status|stop`` as a user meets them.

Bad options end with one line and an exit code before anything changes; a
running release is shown with its time left and limits, and stopped by hand;
a release watched in this process (the canary flow on the session's Prefect
harness) that gets no traffic ends inconclusive, with its exit code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aipaas.cli import app
from aipaas.exceptions import CanaryError, ConfigurationError
from aipaas.modeldef import load_definition
from aipaas.settings import Settings
from aipaas.training import canary, registry, tags
from tests.conftest import settings_env
from tests.support.models import make_champion
from tests.support.registry import MODEL, register_tiny, tiny_settings

AIPAAS = str(Path(sys.executable).parent / "aipaas")


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def tiny(settings: Settings, tmp_path: Path, use_settings: Callable[..., Settings]) -> Settings:
    s = tiny_settings(settings, tmp_path)
    use_settings(s)
    return s


def test_bad_release_options_end_with_a_message_and_change_nothing(tiny: Settings) -> None:
    env = {**settings_env(tiny), "PATH": "/usr/bin:/bin"}
    for args, needle in [
        (["--canary", "10", "--watch", "soon"], "watch 'soon' is not a duration like"),
        (["--canary", "10", "--watch", "-5m"], "is not a duration"),
        (["--watch", "15m"], "--watch needs --canary PCT or --shadow"),
        (["--detach"], "--detach needs --canary PCT or --shadow"),
        (["--canary", "10", "--shadow"], "choose --canary PCT or --shadow, not both"),
        (["--canary", "150"], "canary: percent must be in (0, 100]"),
    ]:
        done = subprocess.run(
            [AIPAAS, "promote", MODEL, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == ConfigurationError.exit_code, (args, done.stderr)
        assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert canary.history(tiny, MODEL) == []  # nothing started, nothing recorded


def test_status_shows_the_release_and_stop_sends_traffic_back(tiny: Settings) -> None:
    v1 = register_tiny(tiny)
    make_champion(tiny, MODEL, v1)
    v2 = register_tiny(tiny)
    empty = run("canary", "status", MODEL)
    assert empty.exit_code == 0 and f"no canary or shadow of {MODEL} is running" in empty.output

    canary.start(tiny, load_definition(MODEL, tiny.models_dir), v2, percent=20, watch_s=600)
    shown = run("canary", "status", MODEL)
    assert shown.exit_code == 0, shown.output
    assert f"canary of {MODEL} v{v2} beside champion v{v1}, 20% of clients" in shown.output
    assert "m59s left (until" in shown.output or "m00s left (until" in shown.output
    assert "canary_error_rate" in shown.output and "not judged yet" in shown.output
    as_json = json.loads(run("canary", "status", MODEL, "--json").output)
    assert as_json["active"]["version"] == v2 and 590 < as_json["active"]["remaining_s"] <= 600
    assert as_json["active"]["evidence"]["challenger"]["requests"] == 0

    stopped = run("canary", "stop", MODEL, "--reason", "wrong version")
    assert stopped.exit_code == 0, stopped.output
    assert f"every request goes to champion v{v1} again" in stopped.output
    assert canary.active(tiny, MODEL) is None
    assert registry.get_alias(MODEL, tags.CHAMPION).version == v1  # type: ignore[union-attr]
    assert registry.get_alias(MODEL, tags.CANARY) is None
    after = run("canary", "status", MODEL)
    assert "last outcomes:" in after.output and f"v{v2} canary stopped" in after.output
    assert "wrong version" in after.output
    again = run("canary", "stop", MODEL)
    assert isinstance(again.exception, CanaryError)
    assert f"no canary or shadow of {MODEL} is running" in str(again.exception)


@pytest.mark.slow
def test_a_release_watched_here_without_traffic_ends_inconclusive(
    tiny: Settings, prefect_harness: None
) -> None:
    v1 = register_tiny(tiny)
    make_champion(tiny, MODEL, v1)
    v2 = register_tiny(tiny)
    result = run("promote", MODEL, "--canary", "30", "--watch", "3s")
    assert result.exit_code == 24, result.output
    out = result.output
    assert f"started a canary of {MODEL} v{v2} beside champion v{v1} for 30% of clients" in out
    assert f"challenger v{v2}: 0 req" in out  # a line per check
    assert "inconclusive: " in out and "only 0 challenger requests" in out
    assert f"champion is v{v1}" in out
    assert registry.get_alias(MODEL, tags.CHAMPION).version == v1  # type: ignore[union-attr]
    assert canary.active(tiny, MODEL) is None
