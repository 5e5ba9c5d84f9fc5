"""The Great Expectations adapter: every bad input gives a readable, failed report."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aipaas.datasets import ingest
from aipaas.datasets.validation import render_markdown, suite_path, validate_file
from aipaas.exceptions import ConfigurationError
from aipaas.settings import PROJECT_ROOT, DatasetSpec, Settings

SUITE = suite_path(PROJECT_ROOT / "expectations", "breast_cancer")


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    spec = DatasetSpec(source="sklearn:breast_cancer", target="diagnosis")
    return ingest.load_source(spec, Settings(_env_file=None))


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def test_good_file_passes_and_writes_data_docs(good, tmp_path):
    docs = tmp_path / "data_docs"
    report = validate_file(_write(good, tmp_path / "raw.csv"), SUITE, "breast_cancer", docs)
    assert report.success and not report.failed and report.error is None
    assert report.rows == 569
    assert report.data_docs and Path(report.data_docs).is_file()
    assert "<html" in Path(report.data_docs).read_text().lower()
    assert (docs / "index.html").is_file()


def _nulls(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[[3, 10, 20], "mean_texture"] = np.nan
    return f


def _out_of_range(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[[0, 1], "mean_radius"] = [-5.0, -7.5]
    return f


def _unknown_label(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[[2, 4, 6, 8], "diagnosis"] = "unsure"
    return f


def _wrong_type(f: pd.DataFrame) -> pd.DataFrame:
    f["mean_area"] = f["mean_area"].astype(object)
    f.loc[[5], "mean_area"] = "large"
    return f


# (how to break the data, expectation that must fail, its column, failing rows, an example)
CASES: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str, str | None, int, object]] = {
    "nulls": (_nulls, "expect_column_values_to_not_be_null", "mean_texture", 3, None),
    "out_of_range": (
        _out_of_range,
        "expect_column_values_to_be_between",
        "mean_radius",
        2,
        -5.0,
    ),
    "unknown_target": (
        _unknown_label,
        "expect_column_values_to_be_in_set",
        "diagnosis",
        4,
        "unsure",
    ),
    "wrong_type": (
        _wrong_type,
        "expect_column_values_to_be_in_type_list",
        "mean_area",
        1,
        "large",
    ),
    "missing_column": (
        lambda f: f.drop(columns=["mean_radius"]),
        "expect_column_to_exist",
        "mean_radius",
        1,
        None,
    ),
    "wrong_column": (
        lambda f: f.rename(columns={"mean_radius": "radius"}),
        "expect_table_columns_to_match_set",
        None,
        1,
        None,
    ),
    "too_few_rows": (
        lambda f: f.head(10),
        "expect_table_row_count_to_be_between",
        None,
        1,
        None,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_names_expectation_column_count_and_examples(good, tmp_path, case):
    breaker, expectation, column, count, example = CASES[case]
    path = _write(breaker(good.copy()), tmp_path / f"{case}.csv")

    report = validate_file(path, SUITE, "breast_cancer")

    assert not report.success
    hits = [f for f in report.failed if f.expectation == expectation and f.column == column]
    assert hits, [(f.expectation, f.column) for f in report.failed]
    assert hits[0].unexpected_count == count
    if example is not None:
        assert example in hits[0].examples
    # The report survives JSON (NaN examples become null) and renders as a table.
    json.dumps(report.to_dict(), allow_nan=False)
    table = render_markdown(report)
    assert expectation in table and "FAILED" in table


def test_missing_column_says_which(good, tmp_path):
    path = _write(good.drop(columns=["worst_area"]), tmp_path / "x.csv")
    report = validate_file(path, SUITE, "breast_cancer")
    details = " ".join(f.details for f in report.failed)
    assert "missing columns: worst_area" in details


def test_wrong_type_is_reported_as_a_type(good, tmp_path):
    path = _write(_wrong_type(good.copy()), tmp_path / "x.csv")
    report = validate_file(path, SUITE, "breast_cancer")
    (hit,) = [f for f in report.failed if f.expectation.endswith("in_type_list")]
    assert hit.unexpected_count == 1 and hit.examples == ["large"]
    assert "not numbers" in hit.details


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        (b"", "file is empty"),
        (b"\n\n", "no columns"),
        (gzip.compress(b"a,b\n1,2\n" * 50), "not a CSV file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00", "not a CSV file"),
    ],
    ids=["missing", "empty", "blank", "gzip", "png"],
)
def test_unreadable_file_is_a_failed_report_not_a_traceback(tmp_path, content, message):
    path = tmp_path / "input.csv"
    if content is not None:
        path.write_bytes(content)
    report = validate_file(path, SUITE, "breast_cancer")
    assert not report.success
    assert report.error and message in report.error
    assert str(path) in report.error
    assert "could not be validated" in render_markdown(report)


def test_text_that_is_not_a_table_fails_on_columns(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text('{"mean_radius": 1.0, "diagnosis": "benign"}\n')
    report = validate_file(path, SUITE, "breast_cancer")
    assert not report.success
    assert any(f.expectation == "expect_table_columns_to_match_set" for f in report.failed)


def test_missing_or_broken_suite_is_a_configuration_error(good, tmp_path):
    path = _write(good.head(200), tmp_path / "x.csv")
    with pytest.raises(ConfigurationError, match="no expectation suite"):
        validate_file(path, tmp_path / "nope.json", "breast_cancer")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        validate_file(path, broken, "breast_cancer")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"name": "x", "expectations": [{"type": "expect_magic"}]}))
    with pytest.raises(ConfigurationError, match="not valid"):
        validate_file(path, unknown, "breast_cancer")
