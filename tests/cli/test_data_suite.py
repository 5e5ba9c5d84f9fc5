"""``aipaas data suite``: scaffold a suite for a new dataset, as a user adding one meets it.

A private project declares two datasets the demo does not ship (scikit-learn's
wine, multiclass, and diabetes, regression) as ``csv:`` sources; the suite is
scaffolded by the CLI, then checked by ``aipaas data validate`` in a real process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.datasets import load_diabetes, load_wine
from typer.testing import CliRunner

from aipaas.cli import app
from aipaas.datasets.ingest import snake_case
from aipaas.exceptions import ConfigurationError, DatasetNotFoundError, DataValidationError
from aipaas.settings import PROJECT_ROOT, Settings

AIPAAS = str(Path(sys.executable).parent / "aipaas")


def _source(loader: Callable[..., object], target: str) -> pd.DataFrame:
    bunch = loader(as_frame=True)
    frame = bunch.data.rename(columns=snake_case)  # type: ignore[attr-defined]
    frame[target] = bunch.target  # type: ignore[attr-defined]
    return frame


@pytest.fixture
def project(tmp_path: Path, home: Path, use_settings: Callable[..., Settings]) -> Path:
    """A project with wine (multiclass) and diabetes (regression) declared as csv: sources."""
    repo = tmp_path / "repo"
    sources = repo / "data" / "sources"
    sources.mkdir(parents=True)
    _source(load_wine, "cultivar").to_csv(sources / "wine.csv", index=False)
    _source(load_diabetes, "progression").to_csv(sources / "diabetes.csv", index=False)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["datasets"] = {
        "wine": {"source": "csv:data/sources/wine.csv", "target": "cultivar"},
        "diabetes": {
            "source": "csv:data/sources/diabetes.csv",
            "target": "progression",
            "task": "regression",
        },
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    use_settings(
        env={
            "AIPAAS_HOME": str(home),
            "AIPAAS_DATA__DIR": str(repo / "data"),
            "AIPAAS_DATA__EXPECTATIONS_DIR": str(repo / "expectations"),
            "AIPAAS_VERSIONING__REPO": str(repo),
            "AIPAAS_PARAMS": str(repo / "params.yaml"),
        }
    )
    return repo


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIPAAS, *args], env=dict(os.environ), capture_output=True, text=True, timeout=300
    )


def test_help():
    result = CliRunner().invoke(app, ["data", "suite", "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--from", "--output", "--force"):
        assert option in result.output


@pytest.mark.parametrize(("dataset", "target"), [("wine", "cultivar"), ("diabetes", "progression")])
def test_scaffold_from_the_declared_source_then_validate_passes(project, dataset, target):
    result = CliRunner().invoke(app, ["data", "suite", dataset])

    assert result.exit_code == 0, result.output
    suite_file = project / "expectations" / f"{dataset}.json"
    rows = len(pd.read_csv(project / "data" / "sources" / f"{dataset}.csv"))
    assert f"wrote {suite_file}:" in result.output and f"from {rows} rows of csv:" in result.output
    (line,) = [x for x in result.output.splitlines() if x.strip().startswith(target)]
    assert "target" in line
    suite = json.loads(suite_file.read_text())
    assert suite["name"] == dataset
    assert all(e["meta"]["scaffolded_from_rows"] == rows for e in suite["expectations"])

    # The suite passes on what ingest will write: validate the source as raw.csv would be.
    checked = CliRunner().invoke(
        app,
        ["data", "validate", dataset, "--path", str(project / f"data/sources/{dataset}.csv")],
    )
    assert checked.exit_code == 0, checked.output
    assert "passed" in checked.output


def test_a_corrupted_copy_fails_validate_naming_each_column(project, tmp_path):
    assert CliRunner().invoke(app, ["data", "suite", "wine"]).exit_code == 0
    frame = pd.read_csv(project / "data" / "sources" / "wine.csv")
    frame["magnesium"] = frame["magnesium"].astype(object)
    frame.loc[0, "magnesium"] = "lots"  # text in a numeric column
    frame.loc[1, "alcohol"] = 1000.0  # out of range
    frame.loc[2, "cultivar"] = 7  # a class never seen
    frame.loc[[3, 4], "hue"] = None  # nulls where there were none
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)

    result = _cli("data", "validate", "wine", "--path", str(bad))

    assert result.returncode == DataValidationError.exit_code, result.stderr
    assert "FAILED" in result.stdout and "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    for column, expectation, example in [
        ("magnesium", "in_type_list", "lots"),
        ("alcohol", "to_be_between", "1000.0"),
        ("cultivar", "to_be_in_set", "7"),
        ("hue", "not_be_null", ""),
    ]:
        (line,) = [x for x in lines if f" {column} " in x and expectation in x]
        assert example in line


def test_an_existing_suite_is_kept_unless_forced(project, tmp_path):
    suite_file = project / "expectations" / "wine.json"
    suite_file.parent.mkdir(parents=True)
    suite_file.write_text('{"edited": "by a person"}')

    refused = _cli("data", "suite", "wine")

    assert refused.returncode == ConfigurationError.exit_code
    assert f"{suite_file} already exists; pass --force" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert suite_file.read_text() == '{"edited": "by a person"}'

    forced = CliRunner().invoke(app, ["data", "suite", "wine", "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(suite_file.read_text())["name"] == "wine"


def test_from_a_file_to_another_output(project, tmp_path):
    sample = tmp_path / "sample.csv"
    pd.read_csv(project / "data/sources/diabetes.csv").head(100).to_csv(sample, index=False)
    out = tmp_path / "review" / "diabetes.json"

    result = CliRunner().invoke(
        app, ["data", "suite", "diabetes", "--from", str(sample), "--output", str(out)]
    )

    assert result.exit_code == 0, result.output
    assert f"from 100 rows of {sample}" in result.output
    assert not (project / "expectations" / "diabetes.json").exists()
    rows = json.loads(out.read_text())["expectations"][1]
    assert rows["type"] == "expect_table_row_count_to_be_between"
    assert rows["kwargs"]["min_value"] == 50


def test_raw_data_is_preferred_to_the_source_once_ingested(project):
    raw = project / "data" / "wine" / "raw.csv"
    raw.parent.mkdir(parents=True)
    pd.read_csv(project / "data/sources/wine.csv").head(60).to_csv(raw, index=False)

    result = CliRunner().invoke(app, ["data", "suite", "wine"])

    assert result.exit_code == 0, result.output
    assert f"from 60 rows of {raw}" in result.output


def test_bad_input_is_a_clear_error(project, tmp_path):
    unknown = CliRunner().invoke(app, ["data", "suite", "claims"])
    assert isinstance(unknown.exception, DatasetNotFoundError)
    assert "unknown dataset 'claims'" in str(unknown.exception)

    missing = CliRunner().invoke(app, ["data", "suite", "wine", "--from", "nope.csv"])
    assert isinstance(missing.exception, DataValidationError)
    assert "cannot scaffold a suite for wine from nope.csv: file not found" in str(
        missing.exception
    )

    no_target = tmp_path / "no_target.csv"
    pd.DataFrame({"x": [1, 2, 3]}).to_csv(no_target, index=False)
    wrong = CliRunner().invoke(app, ["data", "suite", "wine", "--from", str(no_target)])
    assert isinstance(wrong.exception, ConfigurationError)
    assert "target 'cultivar' of wine is not a column" in str(wrong.exception)
    assert not (project / "expectations" / "wine.json").exists()
