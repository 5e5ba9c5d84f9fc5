"""The suite scaffold: the data it was built from passes, a corrupted copy fails by column.

Validation runs through the real adapter (:mod:`aipaas.datasets.validation`,
Great Expectations on an ephemeral context), never on the suite dict alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_wine

from aipaas.datasets import scaffold
from aipaas.datasets.ingest import snake_case
from aipaas.datasets.validation import validate_file
from aipaas.exceptions import ConfigurationError, DataValidationError

ROWS = 200


def _claims(rows: int = ROWS) -> pd.DataFrame:
    """A small mixed table: every kind of column the scaffold tells apart."""
    rng = np.random.default_rng(7)
    words = ["the claim was filed after the storm", "water damage in the kitchen", "a stolen bike"]
    frame = pd.DataFrame(
        {
            "amount": rng.uniform(100, 5000, rows).round(2),
            "age": rng.integers(18, 90, rows),
            "delta": rng.normal(0, 1, rows),
            "region": rng.choice(["north", "south", "east"], rows),
            "children": rng.integers(0, 4, rows),
            "urgent": rng.choice([True, False], rows),
            "policy_id": [f"P{i:05d}" for i in range(rows)],
            "description": [f"{words[i % 3]} (case {i})" for i in range(rows)],
            "income": rng.uniform(1e4, 1e5, rows),
            "approved": rng.choice(["yes", "no"], rows),
        }
    )
    frame.loc[frame.index % 20 == 0, "income"] = np.nan  # 5% missing
    return scaffold.as_read_from_csv(frame)


def _write(result: scaffold.ScaffoldedSuite, tmp_path: Path) -> Path:
    return scaffold.write_suite(result, tmp_path / "expectations" / "claims.json")


def _by(result: scaffold.ScaffoldedSuite, column: str) -> dict[str, dict]:
    return {
        e["type"]: e["kwargs"]
        for e in result.suite["expectations"]
        if e["kwargs"].get("column") == column
    }


# ---------------------------------------------------------------- what it writes


def test_each_column_gets_the_checks_of_its_kind():
    frame = _claims()
    result = scaffold.scaffold_suite(frame, "claims", target="approved")
    kinds = {c.name: c.kind for c in result.columns}
    assert kinds == {
        "amount": "numeric",
        "age": "numeric",
        "delta": "numeric",
        "region": "category",
        "children": "codes",
        "urgent": "boolean",
        "policy_id": "string",
        "description": "text",
        "income": "numeric",
        "approved": "target",
    }
    table = {e["type"]: e["kwargs"] for e in result.suite["expectations"][:2]}
    assert table["expect_table_columns_to_match_set"]["column_set"] == list(frame.columns)
    assert table["expect_table_row_count_to_be_between"] == {
        "min_value": ROWS // 2,
        "max_value": 1_000_000,
    }

    amount = _by(result, "amount")
    assert amount["expect_column_values_to_be_in_type_list"]["type_list"] == ["float64", "int64"]
    assert "mostly" not in amount["expect_column_values_to_not_be_null"]
    bounds = amount["expect_column_values_to_be_between"]
    assert bounds["min_value"] == 0  # never seen below zero: widened down to zero, not past it
    assert frame["amount"].max() * 1.2 < bounds["max_value"] < frame["amount"].max() * 1.6
    delta = _by(result, "delta")["expect_column_values_to_be_between"]
    assert (
        delta["min_value"] < frame["delta"].min() - 1
        and delta["max_value"] > 1 + frame["delta"].max()
    )

    assert _by(result, "region")["expect_column_values_to_be_in_set"]["value_set"] == [
        "east",
        "north",
        "south",
    ]
    assert _by(result, "children")["expect_column_values_to_be_in_set"]["value_set"] == [0, 1, 2, 3]
    assert _by(result, "urgent")["expect_column_values_to_be_in_set"]["value_set"] == [False, True]
    assert _by(result, "approved")["expect_column_values_to_be_in_set"]["value_set"] == [
        "no",
        "yes",
    ]
    text = _by(result, "description")
    assert text["expect_column_values_to_not_match_regex"]["regex"] == r"^\s*$"
    lengths = text["expect_column_value_lengths_to_be_between"]
    assert lengths["min_value"] <= frame["description"].str.len().min() // 2 + 1
    assert lengths["max_value"] >= frame["description"].str.len().max() * 2
    assert "expect_column_values_to_be_in_set" not in _by(result, "policy_id")

    income_nulls = _by(result, "income")["expect_column_values_to_not_be_null"]
    assert income_nulls["mostly"] == 0.9  # 5% seen, twice that allowed


def test_every_expectation_says_it_was_scaffolded_and_from_how_many_rows():
    result = scaffold.scaffold_suite(_claims(), "claims", target="approved", source="claims.csv")
    for e in result.suite["expectations"]:
        assert e["meta"]["scaffolded_from_rows"] == ROWS
        assert e["meta"]["notes"].startswith(f"scaffolded from {ROWS} rows: ")
    bounds = next(
        e for e in result.suite["expectations"] if e["type"] == "expect_column_values_to_be_between"
    )
    assert "seen " in bounds["meta"]["notes"] and "widened" in bounds["meta"]["notes"]
    assert "claims.csv" in result.suite["meta"]["notes"]
    assert result.suite["meta"]["great_expectations_version"].startswith("1.")


@pytest.mark.parametrize(
    ("low", "high", "whole", "expected"),
    [
        (6.981, 28.11, False, (0.0, 38.7)),  # non-negative stays non-negative
        (-0.107226, 0.110727, False, (-0.217, 0.22)),
        (18, 89, True, (0.0, 125.0)),
        (5.0, 5.0, True, (2.0, 8.0)),  # a constant: half its value either side
        (0.0, 0.0, False, (0.0, 1.0)),
        (-3.0, -1.0, True, (-4.0, 0.0)),
    ],
)
def test_ranges_are_widened_and_rounded_outward(low, high, whole, expected):
    lo, hi = scaffold.widen(low, high, 0.5, whole)
    assert (lo, hi) == expected
    assert lo <= low and hi >= high


def test_a_column_that_is_mostly_null_or_all_null_is_flagged_not_guessed():
    frame = pd.DataFrame({"x": [1.0] * 4 + [None] * 6, "y": [None] * 10, "t": ["a", "b"] * 5})
    result = scaffold.scaffold_suite(frame, "d", target="t")
    assert "expect_column_values_to_not_be_null" not in _by(result, "x")
    assert list(_by(result, "y")) == ["expect_column_to_exist"]
    assert any(w.startswith("x: 6 nulls seen") for w in result.warnings)
    assert any(w.startswith("y: every value is null") for w in result.warnings)


def test_infinite_values_leave_the_range_to_a_person():
    frame = pd.DataFrame({"x": [1.0, float("inf"), 3.0], "t": ["a", "b", "a"]})
    result = scaffold.scaffold_suite(frame, "d", target="t")
    assert "expect_column_values_to_be_between" not in _by(result, "x")
    assert result.warnings == ["x: infinite values seen; its range is not checked"]


def test_numbers_read_as_text_are_called_out():
    frame = pd.DataFrame({"x": [str(i) for i in range(30)] + ["n/a"], "t": ["a"] * 31})
    result = scaffold.scaffold_suite(frame, "d", target="t")
    (warning,) = result.warnings
    assert "x: mostly numbers but read as text" in warning and "'n/a'" in warning


def test_bad_inputs_are_refused_with_a_reason(tmp_path):
    frame = pd.DataFrame({"x": [1, 2], "label": ["a", "b"]})
    with pytest.raises(ConfigurationError, match=r"target 'y' of d is not a column .*x, label"):
        scaffold.scaffold_suite(frame, "d", target="y")
    with pytest.raises(ConfigurationError, match="declared a regression but holds text"):
        scaffold.scaffold_suite(frame, "d", target="label", task="regression")
    with pytest.raises(DataValidationError, match="it has no rows"):
        scaffold.scaffold_suite(frame.head(0), "d", target="label")

    result = scaffold.scaffold_suite(frame, "d", target="label")
    path = tmp_path / "d.json"
    path.write_text("{}")
    with pytest.raises(ConfigurationError, match="already exists; pass --force"):
        scaffold.write_suite(result, path)
    assert path.read_text() == "{}"
    scaffold.write_suite(result, path, force=True)
    assert json.loads(path.read_text()) == result.suite


# ---------------------------------------------------------------- through real validation


@pytest.fixture(scope="module")
def claims_suite(tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("claims")
    frame = _claims()
    result = scaffold.scaffold_suite(frame, "claims", target="approved")
    return frame, _write(result, root)


def test_the_suite_validates_the_data_it_was_built_from(claims_suite, tmp_path):
    frame, suite = claims_suite
    data = tmp_path / "claims.csv"
    frame.to_csv(data, index=False)
    report = validate_file(data, suite, "claims")
    assert report.success, report.failed
    assert report.rows == ROWS and report.evaluated == len(
        json.loads(suite.read_text())["expectations"]
    )


def _corrupt_text_in_numbers(f: pd.DataFrame) -> pd.DataFrame:
    f["age"] = f["age"].astype(object)
    f.loc[3, "age"] = "forty"
    return f


def _corrupt_out_of_range(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[3, "amount"] = 1e7
    return f


def _corrupt_new_category(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[[3, 4], "region"] = "atlantis"
    return f


def _corrupt_nulls(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[[3, 4, 5], "delta"] = np.nan
    return f


def _corrupt_unknown_class(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[3, "approved"] = "maybe"
    return f


def _corrupt_blank_text(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[3, "description"] = "   "
    return f


@pytest.mark.parametrize(
    ("corrupt", "column", "expectation", "example"),
    [
        (_corrupt_text_in_numbers, "age", "expect_column_values_to_be_in_type_list", "forty"),
        (_corrupt_out_of_range, "amount", "expect_column_values_to_be_between", 1e7),
        (_corrupt_new_category, "region", "expect_column_values_to_be_in_set", "atlantis"),
        (_corrupt_nulls, "delta", "expect_column_values_to_not_be_null", None),
        (_corrupt_unknown_class, "approved", "expect_column_values_to_be_in_set", "maybe"),
        (_corrupt_blank_text, "description", "expect_column_values_to_not_match_regex", None),
    ],
)
def test_a_corrupted_copy_fails_naming_the_column(
    claims_suite, tmp_path, corrupt, column, expectation, example
):
    frame, suite = claims_suite
    bad = tmp_path / "bad.csv"
    corrupt(frame.copy()).to_csv(bad, index=False)

    report = validate_file(bad, suite, "claims")

    assert not report.success
    failed = {(f.column, f.expectation): f for f in report.failed}
    assert (column, expectation) in failed, report.failed
    assert {f.column for f in report.failed} == {column}
    if example is not None:
        assert example in failed[column, expectation].examples


# ---------------------------------------------------------------- datasets the demo does not ship


@pytest.mark.parametrize(
    ("loader", "target", "task", "classes"),
    [(load_wine, "cultivar", "classification", 3), (load_diabetes, "progression", "regression", 0)],
)
def test_a_multiclass_and_a_regression_dataset_scaffold_then_pass(
    tmp_path, loader, target, task, classes
):
    bunch = loader(as_frame=True)
    frame = bunch.data.rename(columns=snake_case)
    frame[target] = bunch.target
    data = tmp_path / "data.csv"
    frame.to_csv(data, index=False)
    read = pd.read_csv(data)

    result = scaffold.scaffold_suite(read, "new", target=target, task=task, source=str(data))
    suite = scaffold.write_suite(result, tmp_path / "new.json")

    report = validate_file(data, suite, "new")
    assert report.success, report.failed
    checks = _by(result, target)
    if classes:
        assert checks["expect_column_values_to_be_in_set"]["value_set"] == list(range(classes))
    else:
        bounds = checks["expect_column_values_to_be_between"]
        assert (
            bounds["min_value"] <= read[target].min() and bounds["max_value"] >= read[target].max()
        )
        assert "expect_column_values_to_be_in_set" not in checks

    shifted = read.copy()
    shifted.loc[0, target] = 99 if classes else -1e6
    shifted.to_csv(tmp_path / "bad.csv", index=False)
    report = validate_file(tmp_path / "bad.csv", suite, "new")
    assert not report.success and {f.column for f in report.failed} == {target}
