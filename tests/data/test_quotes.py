"""The text dataset ``quotes``: Debian's fortunes, its suite, and its real DVC stages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from aipaas.datasets import ingest
from aipaas.datasets.validation import suite_path, validate_frame
from aipaas.exceptions import DataValidationError
from aipaas.settings import PROJECT_ROOT, Settings
from tests.support.project import git, new_project, project_settings

SUITE = suite_path(PROJECT_ROOT / "expectations", "quotes")
TOPICS = {"computers", "people", "politics", "science"}


@pytest.fixture(scope="module")
def source() -> pd.DataFrame:
    spec = ingest.spec("quotes", Settings(_env_file=None))
    return ingest.load_source(spec, Settings(_env_file=None))


def test_source_is_one_text_column_and_four_topics(source: pd.DataFrame) -> None:
    assert list(source.columns) == ["text", "topic"]
    assert set(source["topic"]) == TOPICS
    assert source["topic"].value_counts().min() >= 600
    assert len(source) == source["text"].nunique() > 3500
    assert not source["text"].str.contains(r"\s\s|\n|\x08").any()


def test_source_passes_the_committed_suite(source: pd.DataFrame) -> None:
    report = validate_frame(source, SUITE, "quotes")
    assert report.success, report.failed
    assert report.evaluated == 16


def test_bad_rows_fail_the_suite_with_a_readable_report(source: pd.DataFrame) -> None:
    bad = source.copy()
    bad.loc[0, "text"] = "   "
    bad.loc[1, "topic"] = "startrek"
    bad.loc[2, "text"] = "x" * 5000
    report = validate_frame(bad, SUITE, "quotes")
    assert not report.success
    failed = {(f.expectation, f.column): f for f in report.failed}
    assert ("expect_column_values_to_not_match_regex", "text") in failed
    assert ("expect_column_value_lengths_to_be_between", "text") in failed
    unknown = failed[("expect_column_values_to_be_in_set", "topic")]
    assert unknown.unexpected_count == 1 and "startrek" in unknown.examples


def test_text_that_is_not_english_fails_the_language_checks(source: pd.DataFrame) -> None:
    bad = source.copy()
    bad["text"] = ["zxq vbnm " + str(i) for i in range(len(bad))]
    report = validate_frame(bad, SUITE, "quotes")
    assert "expect_column_values_to_match_regex" in {f.expectation for f in report.failed}


@pytest.mark.slow
def test_quotes_go_through_the_real_stages(tmp_path: Path, home: Path) -> None:
    """ingest -> validate -> split through ``dvc repro``, as ``aipaas data run quotes`` does."""
    repo = new_project(tmp_path)
    shutil.copy2(SUITE, repo / "expectations" / "quotes.json")
    (repo / "data/incoming/quotes").mkdir(parents=True)
    (repo / "data/incoming/quotes/.gitkeep").touch()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "quotes")
    settings = project_settings(repo, home)

    version = ingest.run_data_pipeline("quotes", settings, push=False)

    assert version.suite_passed and version.target == "topic" and version.rows > 3500
    train = pd.read_csv(version.train_path)
    holdout = pd.read_csv(version.holdout_path)
    # A sample of the rows (the split is by content): 20% up to sampling noise.
    assert len(holdout) == pytest.approx(0.2 * version.rows, abs=40)
    assert set(train["topic"]) == set(holdout["topic"]) == TOPICS
    assert ingest.recorded_version("quotes", settings).hash == version.hash

    # A bad incoming file stops the pipeline at validate: nothing new is recorded.
    pd.DataFrame({"text": [""], "topic": ["startrek"]}).to_csv(
        repo / "data/incoming/quotes/bad.csv", index=False
    )
    with pytest.raises(DataValidationError, match="quotes failed its suite"):
        ingest.run_data_pipeline("quotes", settings, push=False)
