"""``aipaas keys create|list|revoke|rotate`` as a user meets them: pins, limits, rotation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aipaas.cli import app
from aipaas.exceptions import ConfigurationError, UnsignedVersionError
from aipaas.inference import keys
from aipaas.training import attestation
from tests.conftest import settings_env

AIPAAS = str(Path(sys.executable).parent / "aipaas")


@pytest.fixture
def cli_settings(settings, use_settings):
    use_settings(settings)
    return settings


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def _promoted_version_1(settings) -> None:
    """A real MLflow registry with diagnosis v1 promoted (signed) and v2 never promoted."""
    from mlflow import MlflowClient

    from aipaas.training import registry

    registry.connect(settings)
    client = MlflowClient()
    client.create_registered_model("diagnosis")
    for _ in range(2):
        client.create_model_version("diagnosis", source=str(settings.home / "artifact"))
    att = attestation.sign(
        settings,
        model="diagnosis",
        version="1",
        action="promote",
        result="promoted",
        decided_by="alice",
        at="2026-01-01T00:00:00+00:00",
    )
    registry.set_tags("diagnosis", "1", attestation.tag_for(att))


def test_create_with_a_pin_a_quota_and_a_budget_then_list(cli_settings):
    _promoted_version_1(cli_settings)
    result = run(
        "keys", "create", "--name", "app", "--scopes", "predict",
        "--pin", "diagnosis=1", "--quota", "10000/day", "--budget", "50/month",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "pinned: diagnosis=1" in lines and "quota: 10000/day, budget: 50/month" in lines
    token = lines[-1]
    key_id = token.split("_")[1]
    assert keys.KeyStore(cli_settings, ttl_s=0).authenticate(f"Bearer {token}").pins == {
        "diagnosis": "1"
    }

    refused = run("keys", "create", "--name", "other", "--pin", "diagnosis=2")
    assert isinstance(refused.exception, UnsignedVersionError)
    assert "cannot pin diagnosis=2: only a version that was promoted" in str(refused.exception)

    listed = run("keys", "list")
    (row,) = [line for line in listed.output.splitlines() if line.startswith(key_id)]
    assert "10000/day" in row and "50/month" in row and "diagnosis=1" in row
    (as_json,) = json.loads(run("keys", "list", "--json").output)  # the refused one: not there
    assert (as_json["pins"], as_json["quota"], as_json["budget"]) == (
        {"diagnosis": "1"},
        "10000/day",
        "50/month",
    )


def test_rotate_prints_the_new_secret_once_and_when_the_old_one_ends(cli_settings):
    record, old = keys.create_key(cli_settings, "app", "predict")
    result = run("keys", "rotate", record.id, "--grace", "30m")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    new = lines[-1]
    assert new.startswith(f"aip_{record.id}_") and new != old
    until = keys.get_key(cli_settings, record.id).prev_valid_until
    assert f"the previous secret works until {until}" in lines
    store = keys.KeyStore(cli_settings, ttl_s=0)
    assert not store.authenticate(f"Bearer {new}").previous_secret
    assert store.authenticate(f"Bearer {old}").previous_secret
    (row,) = [
        line for line in run("keys", "list").output.splitlines() if line.startswith(record.id)
    ]
    assert row.endswith(f"(previous secret until {until})")

    bad = run("keys", "rotate", record.id, "--grace", "a while")
    assert isinstance(bad.exception, ConfigurationError)
    assert "grace 'a while' is not like '1h'" in str(bad.exception)


def test_bad_input_ends_with_a_message_and_an_exit_code_not_a_traceback(settings):
    env = {**settings_env(settings), "PATH": "/usr/bin:/bin"}
    for args, needle in [
        (["keys", "rotate", "feedfeedfeed"], "error: no key with id 'feedfeedfeed'"),
        (["keys", "create", "--name", "a", "--pin", "diagnosis"], "is not like 'diagnosis=3'"),
        (["keys", "create", "--name", "a", "--quota", "lots"], "quota 'lots' is not like"),
    ]:
        done = subprocess.run(
            [AIPAAS, *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == ConfigurationError.exit_code, done.stderr
        assert needle in done.stderr and "Traceback" not in done.stderr


def test_create_a_publishable_key_then_list_shows_kind_and_origins(cli_settings):
    result = run(
        "keys", "create", "--name", "shop-web", "--publishable",
        "--origins", "https://shop.example,http://localhost:3000",
        "--scopes", "predict", "--rate", "5/s", "--quota", "1000/day",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    token = lines[-1]
    assert token.startswith("aip_pub_")
    key_id = token.split("_")[2]
    assert lines[0] == f"created publishable key {key_id} for 'shop-web', scopes predict"
    assert "works only from: https://shop.example,http://localhost:3000" in lines
    _, server_token = keys.create_key(cli_settings, "server", "predict")

    listed = run("keys", "list").output.splitlines()
    assert listed[0].split()[:3] == ["id", "name", "kind"] and listed[0].endswith("origins")
    (row,) = [line for line in listed if line.startswith(key_id)]
    assert " publishable " in row and "5/s" in row and "1000/day" in row
    assert row.endswith("https://shop.example,http://localhost:3000")
    (server,) = [line for line in listed if line.startswith(server_token.split("_")[1])]
    assert " secret " in server and server.endswith(" -")
    pub = next(k for k in json.loads(run("keys", "list", "--json").output) if k["id"] == key_id)
    assert (pub["kind"], pub["origins"]) == (
        "publishable",
        ["https://shop.example", "http://localhost:3000"],
    )


def test_a_publishable_key_with_feedback_or_no_origin_is_refused_with_a_message(settings):
    env = {**settings_env(settings), "PATH": "/usr/bin:/bin"}
    for args, needle in [
        (
            ["--publishable", "--origins", "https://shop.example", "--scopes", "predict,feedback"],
            "error: a publishable key may only hold predict scopes",
        ),
        (["--publishable", "--scopes", "predict"], "a publishable key needs --origins"),
        (["--publishable", "--origins", "https://*.shop.example"], "no path, no wildcard"),
        (["--origins", "https://shop.example"], "add --publishable"),
    ]:
        done = subprocess.run(
            [AIPAAS, "keys", "create", "--name", "web", *args],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == ConfigurationError.exit_code, done.stderr
        assert needle in done.stderr and "Traceback" not in done.stderr
    assert keys.list_keys(settings) == []
