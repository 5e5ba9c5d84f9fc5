"""``aipaas data ...`` as a user meets it: help, tables, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from aipaas.cli import app
from aipaas.datasets import ingest
from aipaas.exceptions import ConfigurationError, DatasetNotFoundError, DataValidationError
from aipaas.settings import PROJECT_ROOT, DatasetSpec, Settings, get_settings
from tests.support.project import copy_project, project_env

AIPAAS = str(Path(sys.executable).parent / "aipaas")
COMMANDS = ["ingest", "validate", "split", "run", "version", "list", "restore"]


def _env(data_dir: Path, home: Path, repo: Path) -> dict[str, str]:
    return {
        "AIPAAS_HOME": str(home),
        "AIPAAS_DATA__DIR": str(data_dir),
        "AIPAAS_DATA__EXPECTATIONS_DIR": str(PROJECT_ROOT / "expectations"),
        "AIPAAS_VERSIONING__REPO": str(repo),
    }


@pytest.fixture
def env(tmp_path: Path, home: Path, use_settings: Callable[..., Settings]) -> dict[str, str]:
    """Settings for in-process (CliRunner) and subprocess invocations alike."""
    use_settings(env=_env(tmp_path / "data", home, tmp_path))
    return dict(os.environ)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIPAAS, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, ["data", command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output.splitlines()) > 4


def test_validate_failure_prints_table_and_exits_with_validation_code(env, tmp_path, home):
    frame = ingest.load_source(
        DatasetSpec(source="sklearn:breast_cancer", target="diagnosis"), Settings(_env_file=None)
    )
    frame.loc[[0, 1], "diagnosis"] = "unsure"
    frame.loc[2, "mean_radius"] = -1.0
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)

    result = _cli(["data", "validate", "breast_cancer", "--path", str(bad)], env)

    assert result.returncode == DataValidationError.exit_code, result.stderr
    out = result.stdout
    assert "FAILED" in out
    diagnosis = next(line for line in out.splitlines() if "in_set" in line)
    assert "diagnosis" in diagnosis and " 2 " in diagnosis and "unsure" in diagnosis
    radius = next(line for line in out.splitlines() if "be_between" in line)
    assert "mean_radius" in radius and "-1.0" in radius
    docs = next(line for line in out.splitlines() if line.startswith("Data Docs: "))
    assert Path(docs.removeprefix("Data Docs: ")).is_file()
    assert str(home / "data_docs") in docs
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    # An ad-hoc --path check records nothing.
    assert not (tmp_path / "data" / "breast_cancer").exists()


def test_validate_missing_file_and_version_before_any_run(env, tmp_path):
    result = CliRunner().invoke(app, ["data", "validate", "breast_cancer", "-p", "nope.csv"])
    assert "file not found: nope.csv" in result.output
    assert isinstance(result.exception, DataValidationError)
    assert result.exception.report is not None and result.exception.report.path == "nope.csv"

    # In-process: main() turns the error into its exit code and message, as the
    # real process in the test above shows for another error.
    result = CliRunner().invoke(app, ["data", "version", "breast_cancer"])
    assert isinstance(result.exception, DatasetNotFoundError), result.output
    assert "no recorded version of breast_cancer" in str(result.exception)
    assert "aipaas data run breast_cancer" in str(result.exception)


def test_list_shows_declared_datasets(env):
    result = CliRunner().invoke(app, ["data", "list"])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if line.startswith("breast_cancer")]
    assert "sklearn:breast_cancer" in row and "diagnosis" in row and "not run" in row


@pytest.mark.parametrize("command", ["split", "ingest", "run"])
def test_a_stage_param_overridden_in_the_environment_is_refused(
    env, tmp_path, use_settings, command
):
    shutil.copy2(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    override = {
        "AIPAAS_PARAMS": str(tmp_path / "params.yaml"),
        "AIPAAS_DATASETS__BREAST_CANCER__SOURCE": "sklearn:iris",
    }

    use_settings(env=override)  # on top of the env fixture's
    result = CliRunner().invoke(app, ["data", command, "breast_cancer"])

    assert isinstance(result.exception, ConfigurationError), result.output
    message = str(result.exception)
    assert "datasets.breast_cancer is" in message and "sklearn:iris" in message
    assert f"set datasets.breast_cancer in {tmp_path / 'params.yaml'}" in message
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_run_prints_the_version(tmp_path_factory, tmp_path, home, use_settings):
    repo = copy_project(tmp_path_factory, tmp_path)
    use_settings(env=project_env(repo, home))

    result = CliRunner().invoke(app, ["data", "run", "breast_cancer", "--no-push"])
    assert result.exit_code == 0, result.output
    version = ingest.recorded_version("breast_cancer", get_settings())
    assert f"hash      {version.hash}" in result.output
    assert "rows      569" in result.output and "suite     passed" in result.output
    assert not (home / "dvc-remote").exists()  # --no-push

    listed = CliRunner().invoke(app, ["data", "version", "breast_cancer", "--json"])
    assert json.loads(listed.output)["hash"] == version.hash
    rows = json.loads(CliRunner().invoke(app, ["data", "list", "--json"]).output)
    assert [r["name"] for r in rows] == ["breast_cancer", "quotes"]  # params.yaml's order
    assert rows[0] == {
        "name": "breast_cancer",
        "source": "sklearn:breast_cancer",
        "target": "diagnosis",
        "suite": "passed",
        "hash": version.hash,
        "rows": 569,
    }


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--version", "abc", "--model", "diagnosis", "--model-version", "1"],
        ["--model", "diagnosis"],
    ],
)
def test_restore_needs_one_version_named(env, args):
    result = _cli(["data", "restore", "breast_cancer", *args], env)
    assert result.returncode == ConfigurationError.exit_code, result.stderr
    assert "--version HASH, or --model NAME --model-version N" in result.stderr
    assert "Traceback" not in result.stderr


def test_restore_of_a_version_no_model_names_is_refused(env, tmp_path, home):
    env = {**env, "AIPAAS_MLFLOW__TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    result = _cli(["data", "restore", "breast_cancer", "--version", "0" * 32], env)
    assert result.returncode == DatasetNotFoundError.exit_code, result.stderr
    assert f"no registered model version records breast_cancer version {'0' * 32}" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_stage_command_ends_at_once_with_its_output_flushed(env, tmp_path):
    """A DVC stage's command skips the interpreter's teardown, and loses nothing for it."""
    shutil.copy2(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    stage_env = env | {"AIPAAS_PARAMS": str(tmp_path / "params.yaml")}

    ingested = _cli(["data", "ingest", "breast_cancer"], stage_env)  # stdout is a pipe
    assert ingested.returncode == 0, ingested.stderr
    raw = tmp_path / "data" / "breast_cancer" / "raw.csv"
    assert ingested.stdout == f"ingested breast_cancer: {raw}\n"
    assert len(pd.read_csv(raw)) == 569

    validated = _cli(["data", "validate", "breast_cancer"], stage_env)
    assert validated.returncode == 0, validated.stderr
    assert "passed (" in validated.stdout and "Data Docs:" in validated.stdout
    report = json.loads((tmp_path / "data" / "breast_cancer" / "validation.json").read_text())
    assert report["success"] is True

    # A failure still goes the ordinary way: its message and its exit code.
    raw.write_text(raw.read_text().replace(",benign", ",unsure", 3))
    failed = _cli(["data", "validate", "breast_cancer"], stage_env)
    assert failed.returncode == DataValidationError.exit_code, failed.stdout
    assert "failed validation" in failed.stderr
