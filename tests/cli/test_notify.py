"""``aipaas notify test``, ``aipaas notify status`` and the ``aipaas notifier`` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aipaas.cli import app
from aipaas.exceptions import ConfigurationError
from aipaas.ops import notify
from aipaas.ops.net import free_port
from aipaas.settings import PROJECT_ROOT
from tests.conftest import settings_env
from tests.test_notify import KEY, Receiver, promote, receiver_servers


@pytest.fixture
def receivers() -> Iterator[Callable[[], Receiver]]:
    with receiver_servers() as make:
        yield make


def hooks_env(*hooks: dict) -> dict[str, str]:
    return {
        "AIPAAS_NOTIFY__WEBHOOKS": json.dumps(list(hooks)),
        "AIPAAS_NOTIFY__SIGNING_KEY": KEY,
        "AIPAAS_NOTIFY__TIMEOUT_S": "2",
        # Nobody's Prefect: the notifier says it cannot read it and goes on.
        "AIPAAS_PREFECT__API_URL": f"http://127.0.0.1:{free_port()}/api",
    }


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_notify_test_posts_to_every_webhook_and_says_how_each_answered(
    settings, use_settings, receivers
):
    ok, slack = receivers(), receivers()
    dead = f"http://127.0.0.1:{free_port()}/hooks/secret-token"
    use_settings(
        settings, hooks_env({"url": ok.url}, {"url": slack.url, "format": "slack"}, {"url": dead})
    )
    result = run("notify", "test")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"ok      http://127.0.0.1:{ok.url.split(':')[2].split('/')[0]}/…")
    assert "HTTP 200" in lines[0] and "[signed]" in lines[0]
    assert lines[2].startswith("FAILED  http://127.0.0.1:") and "ConnectError" in lines[2]
    assert "secret-token" not in result.output  # a webhook URL's path is a secret
    assert ok.bodies()[0]["kind"] == "notify.test"
    assert slack.bodies()[0]["text"].startswith("[aipaas] test notification")
    headers, body = ok.posts[0]
    assert notify.verify_signature(
        KEY.encode(), headers["x-aipaas-timestamp"], body, headers["x-aipaas-signature"]
    )


def test_notify_test_without_a_webhook_says_how_to_configure_one(settings, use_settings):
    use_settings(settings)
    result = run("notify", "test")
    assert isinstance(result.exception, ConfigurationError)
    assert "AIPAAS_NOTIFY__WEBHOOKS" in str(result.exception)


def test_notifier_once_sends_what_happened_since_its_last_run_and_status_shows_it(
    settings, use_settings, receivers
):
    rec = receivers()
    s = use_settings(settings, hooks_env({"url": rec.url}))
    first = run("notifier", "--once")
    assert first.exit_code == 0, first.output
    assert rec.posts == []  # the first run starts from now: history is not replayed
    promote(s, version="2")
    second = run("notifier", "--once")
    assert second.exit_code == 0, second.output
    assert "could not read prefect: " in second.output  # said, and the rest still sent
    assert "event promotion.passed: diagnosis v2 promoted to champion" in second.output
    assert [b["kind"] for b in rec.bodies()] == ["promotion.passed"]
    assert run("notifier", "--once").exit_code == 0
    assert len(rec.posts) == 1

    status = run("notify", "status")
    assert status.exit_code == 0, status.output
    assert f"{notify.redacted(rec.url)}: 1 sent, 0 pending, 0 failed" in status.output
    assert "sent    promotion.passed" in status.output


def test_the_notifier_process_sends_while_it_runs_and_stops_on_sigterm(
    settings, use_settings, receivers
):
    rec = receivers()
    env = {**os.environ, **settings_env(settings), **hooks_env({"url": rec.url})}
    s = use_settings(settings, hooks_env({"url": rec.url}))
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("aipaas")), "notifier", "--interval", "0.5"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 60
        while "notifier ready" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        assert "notifier ready: 1 webhook(s)" in line
        time.sleep(1.0)  # its first poll has set the cursors
        promote(s, version="5")
        deadline = time.monotonic() + 20
        while not rec.posts and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [(b["kind"], b["version"]) for b in rec.bodies()] == [("promotion.passed", "5")]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "notifier stopped" in out
