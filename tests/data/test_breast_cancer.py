"""The demo dataset against its suite: the data scikit-learn ships must pass it."""

from __future__ import annotations

import pytest

from aipaas.datasets import ingest
from aipaas.datasets.validation import suite_path, validate_frame
from aipaas.settings import PROJECT_ROOT, DatasetSpec, Settings


@pytest.fixture(scope="module")
def source():
    spec = DatasetSpec(source="sklearn:breast_cancer", target="diagnosis")
    return ingest.load_source(spec, Settings(_env_file=None))


def test_source_has_snake_case_features_and_string_labels(source):
    assert source.shape == (569, 31)
    assert "mean_radius" in source.columns and "worst_concave_points" in source.columns
    assert all(c == ingest.snake_case(c) for c in source.columns)
    assert source["diagnosis"].value_counts().to_dict() == {"benign": 357, "malignant": 212}


def test_source_passes_the_committed_suite(source):
    report = validate_frame(
        source, suite_path(PROJECT_ROOT / "expectations", "breast_cancer"), "breast_cancer"
    )
    assert report.success, report.failed
    assert report.evaluated > 100  # columns, types, nulls, ranges, labels, row count
