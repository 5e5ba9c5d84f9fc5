"""The data stages in-process: ingest, validate, split, and what they refuse."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aipaas.datasets import ingest as data
from aipaas.exceptions import ConfigurationError, DatasetNotFoundError, DataValidationError
from aipaas.settings import PROJECT_ROOT, DatasetSpec, Settings


@pytest.fixture
def st(tmp_path: Path, home: Path) -> Settings:
    """Data under tmp_path, the project's suites, tmp_path as the (non-DVC) repo."""
    return Settings(
        _env_file=None,
        home=home,
        data={"dir": tmp_path / "data", "expectations_dir": PROJECT_ROOT / "expectations"},
        versioning={"repo": tmp_path},
    )


@pytest.fixture(scope="module")
def source() -> pd.DataFrame:
    spec = DatasetSpec(source="sklearn:breast_cancer", target="diagnosis")
    return data.load_source(spec, Settings(_env_file=None))


def test_snake_case():
    assert data.snake_case("mean concave points") == "mean_concave_points"
    assert data.snake_case(" Worst Area (mm^2) ") == "worst_area_mm_2"


def test_ingest_writes_source_then_incoming_rows_in_name_order(st, source):
    incoming = data.paths("breast_cancer", st).incoming
    incoming.mkdir(parents=True)
    source.tail(2).assign(diagnosis="benign").to_csv(incoming / "b-feedback.csv", index=False)
    source.head(3).assign(diagnosis="malignant").to_csv(incoming / "a-feedback.csv", index=False)
    (incoming / "notes.txt").write_text("not a csv: ignored")

    raw = pd.read_csv(data.ingest("breast_cancer", st))

    assert len(raw) == 569 + 3 + 2
    assert list(raw.columns) == list(source.columns)
    assert raw["diagnosis"].iloc[569:].tolist() == ["malignant"] * 3 + ["benign"] * 2


def test_ingest_refuses_an_incoming_file_that_is_not_csv(st):
    incoming = data.paths("breast_cancer", st).incoming
    incoming.mkdir(parents=True)
    (incoming / "feedback.csv").write_bytes(gzip.compress(b"x,y\n1,2\n"))
    with pytest.raises(DataValidationError, match="feedback.csv"):
        data.ingest("breast_cancer", st)
    assert not data.paths("breast_cancer", st).raw.exists()


def test_validate_then_split_is_stratified_and_deterministic(st):
    data.ingest("breast_cancer", st)
    report = data.validate("breast_cancer", st)
    assert report.success
    assert data.read_report("breast_cancer", st) == report
    assert report.data_docs and Path(report.data_docs).is_file()
    assert Path(report.data_docs).is_relative_to(st.home / "data_docs")

    train_path, holdout_path = data.split("breast_cancer", st)
    train, holdout = pd.read_csv(train_path), pd.read_csv(holdout_path)
    assert len(train) + len(holdout) == 569
    assert len(holdout) == pytest.approx(569 * st.data.holdout_fraction, abs=1)
    share = lambda f: (f["diagnosis"] == "malignant").mean()  # noqa: E731
    assert share(train) == pytest.approx(share(holdout), abs=0.01)

    first = train_path.read_bytes(), holdout_path.read_bytes()
    data.split("breast_cancer", st)
    assert (train_path.read_bytes(), holdout_path.read_bytes()) == first


def _bad_raw(kind: str, source: pd.DataFrame, path: Path) -> None:
    frame = source.copy()
    if kind == "missing_file":
        return
    if kind == "empty_file":
        path.write_bytes(b"")
        return
    if kind == "not_csv":
        path.write_bytes(gzip.compress(source.to_csv(index=False).encode()))
        return
    if kind == "missing_column":
        frame = frame.drop(columns=["mean_radius"])
    elif kind == "wrong_column":
        frame = frame.rename(columns={"diagnosis": "label"})
    elif kind == "wrong_type":
        frame["mean_area"] = frame["mean_area"].astype(object)
        frame.loc[0, "mean_area"] = "n/a"
    elif kind == "nulls":
        frame.loc[[0, 1], "worst_area"] = np.nan
    elif kind == "out_of_range":
        frame.loc[0, "mean_smoothness"] = 99.0
    elif kind == "unknown_target":
        frame.loc[0, "diagnosis"] = "maybe"
    frame.to_csv(path, index=False)


BAD = [
    "missing_file",
    "empty_file",
    "not_csv",
    "missing_column",
    "wrong_column",
    "wrong_type",
    "nulls",
    "out_of_range",
    "unknown_target",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_raw_data_fails_validation_and_is_never_split(st, source, kind):
    p = data.paths("breast_cancer", st)
    p.dir.mkdir(parents=True)
    _bad_raw(kind, source, p.raw)

    report = data.validate("breast_cancer", st)

    assert not report.success
    assert report.error or report.failed
    # The report is recorded for the split stage (and the Prefect artifact) to read.
    assert not data.read_report("breast_cancer", st).success
    with pytest.raises(DataValidationError, match="refusing to split") as err:
        data.split("breast_cancer", st)
    assert err.value.report == report
    assert not p.train.exists() and not p.holdout.exists()


def test_split_refuses_before_validation_and_after_raw_changed(st, source):
    data.ingest("breast_cancer", st)
    with pytest.raises(DatasetNotFoundError, match="has not been validated"):
        data.split("breast_cancer", st)
    data.validate("breast_cancer", st)
    p = data.paths("breast_cancer", st)
    pd.concat([source, source.head(5)]).to_csv(p.raw, index=False)
    with pytest.raises(DataValidationError, match="validated with 569"):
        data.split("breast_cancer", st)


def test_validate_a_path_records_nothing(st, source, tmp_path):
    other = tmp_path / "other.csv"
    source.to_csv(other, index=False)
    assert data.validate("breast_cancer", st, path=other).success
    assert not data.paths("breast_cancer", st).validation.exists()


def test_csv_source_lives_under_data_sources(st, source, tmp_path):
    sources = tmp_path / "data" / "sources"
    sources.mkdir(parents=True)
    (sources / "mine.csv").write_text(source.head(150).to_csv(index=False))
    spec = DatasetSpec(source="csv:data/sources/mine.csv", target="diagnosis")
    assert len(data.load_source(spec, st)) == 150
    with pytest.raises(DataValidationError, match="file not found"):
        data.load_source(DatasetSpec(source="csv:data/sources/nope.csv", target="y"), st)
    # Anywhere else DVC would not see it change: refused, with where to put it.
    (tmp_path / "elsewhere.csv").write_text(source.head(150).to_csv(index=False))
    with pytest.raises(ConfigurationError, match="put the file under"):
        data.load_source(DatasetSpec(source="csv:elsewhere.csv", target="diagnosis"), st)


@pytest.mark.parametrize("source_name", ["sklearn:nope", "s3:bucket/x.csv", "breast_cancer"])
def test_unknown_source_is_a_configuration_error(st, source_name):
    with pytest.raises(ConfigurationError, match="source"):
        data.load_source(DatasetSpec(source=source_name, target="y"), st)


def test_unknown_dataset_and_never_produced(st):
    with pytest.raises(DatasetNotFoundError, match="declared: breast_cancer"):
        data.recorded_version("nope", st)
    with pytest.raises(DatasetNotFoundError, match="no recorded version"):
        data.recorded_version("breast_cancer", st)
    assert data.list_datasets(st) == [
        {
            "name": "breast_cancer",
            "source": "sklearn:breast_cancer",
            "target": "diagnosis",
            "hash": None,
            "rows": None,
            "suite": "not run",
        }
    ]
