"""``aipaas predict-batch`` as a user meets it: one error line and its exit code, or a file.

Run through :func:`aipaas.cli.main`, the console script's entry point, in this
process: the same mapping of errors to exit codes a shell sees.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import aipaas.cli.batch  # noqa: F401  (registers predict-batch until aipaas.cli imports it)
from aipaas import audit
from aipaas.cli import main
from aipaas.exceptions import (
    ConfigurationError,
    DatasetNotFoundError,
    DataValidationError,
    ModelNotFoundError,
)
from aipaas.settings import Settings
from tests.conftest import make_settings
from tests.support.models import FEATURES, log_lgbm, tabular_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("cli-batch") / "home"
    home.mkdir()
    s = make_settings(home)
    log_lgbm(s, "diagnosis", champion=True)
    return s


@pytest.fixture
def cli(
    store: Settings,
    tmp_path: Path,
    use_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., tuple[int, str, str]]:
    """``aipaas ARGS`` -> (exit code, stdout, stderr), on the module's registry."""
    use_settings(
        store,
        {
            "AIPAAS_DATA__DIR": str(tmp_path / "repo" / "data"),
            "AIPAAS_VERSIONING__REPO": str(tmp_path / "repo"),
        },
    )

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["aipaas", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        out, err = capsys.readouterr()
        return int(exited.value.code or 0), out, err

    return run


def write_cells(path: Path, n: int = 40, **columns: object) -> Path:
    x, y = tabular_data(n, 3)
    frame = pd.DataFrame({"id": np.arange(n)})
    frame[FEATURES] = x
    frame["diagnosis"] = y
    frame = frame.assign(**columns)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def batch_records(s: Settings) -> list[dict]:
    return [r for r in audit.tail(s, 500) if r["event"] == "batch.predicted"]


def test_a_file_is_scored_and_the_job_is_recorded(
    cli, store: Settings, tmp_path: Path, ray_session: None
) -> None:
    source = write_cells(tmp_path / "cells.parquet")
    out = tmp_path / "scored.csv"
    before = len(batch_records(store))

    code, stdout, stderr = cli("predict-batch", "diagnosis", "--input", str(source), "-o", str(out))

    assert code == 0, stderr
    assert "scored 40 rows of" in stdout and "with diagnosis v1" in stdout
    assert f"output      {out}" in stdout
    assert "row keys    column 'id'" in stdout
    got = pd.read_csv(out)
    assert got["id"].tolist() == list(range(40))
    assert set(got["prediction"]) <= {"benign", "malignant"}
    records = batch_records(store)[before:]
    assert len(records) == 1
    assert records[0]["owner"].endswith(" (cli)")  # the OS user, as promotions name it
    assert f"audit       record {records[0]['seq']}," in stdout


def test_as_names_who_asked_and_json_prints_the_lineage(
    cli, store: Settings, tmp_path: Path, ray_session: None
) -> None:
    source = write_cells(tmp_path / "cells.csv", n=12)
    code, stdout, stderr = cli(
        "predict-batch", "diagnosis", "-i", str(source), "--as", "erin", "--json"
    )
    assert code == 0, stderr
    result = json.loads(stdout)
    assert result["who"] == "erin" and result["rows"] == 12
    assert Path(result["output"]).is_file()
    assert Path(result["output"]).parent == store.home / "batch"
    assert batch_records(store)[-1]["owner"] == "erin"


@pytest.mark.parametrize(
    ("args", "error", "line"),
    [
        (["nope", "-i", "{cells}"], ModelNotFoundError, "no registered model 'nope'"),
        (["diagnosis"], ConfigurationError, "name what to score: --dataset"),
        (["diagnosis", "-d", "nope"], DatasetNotFoundError, "unknown dataset 'nope'"),
        (["diagnosis", "-d", "breast_cancer@abc"], DatasetNotFoundError, "unknown version abc"),
        (["diagnosis", "-i", "{partial}"], DataValidationError, "signature: mean_area"),
        (["diagnosis", "-i", "{junk}"], DataValidationError, "not a CSV file"),
        (["diagnosis", "-i", "{cells}", "-o", "{tmp}/out.xlsx"], ConfigurationError, ".parquet"),
    ],
    ids=[
        "unknown model",
        "no input",
        "unknown dataset",
        "unknown version",
        "missing column",
        "unreadable",
        "bad output",
    ],
)
def test_bad_input_is_one_error_line_and_its_exit_code_and_nothing_written(
    cli, store: Settings, tmp_path: Path, args: list[str], error: type, line: str
) -> None:
    files = {
        "cells": write_cells(tmp_path / "cells.csv", n=5),
        "partial": write_cells(tmp_path / "partial.csv", n=5),
        "junk": tmp_path / "junk.csv",
        "tmp": tmp_path,
    }
    pd.read_csv(files["partial"]).drop(columns=["mean_area"]).to_csv(files["partial"], index=False)
    files["junk"].write_bytes(bytes(range(256)) * 8)
    before = len(batch_records(store))
    outputs = sorted((store.home / "batch").glob("*")) if (store.home / "batch").exists() else []
    argv = [a.format(**files) for a in args]
    out = ["-o", str(tmp_path / "out.csv")] if "-o" not in argv else []

    code, stdout, stderr = cli("predict-batch", *argv, *out)

    assert code == error.exit_code, stderr
    assert stderr.startswith("error: ") and line in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not (tmp_path / "out.csv").exists()
    now = sorted((store.home / "batch").glob("*")) if (store.home / "batch").exists() else []
    assert now == outputs
    assert len(batch_records(store)) == before


def test_help_names_both_sources() -> None:
    from typer.testing import CliRunner

    from aipaas.cli import app

    result = CliRunner().invoke(app, ["predict-batch", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--dataset", "--input", "--output", "--version", "--as", "--workers"):
        assert option in result.output
