"""Batch inference on a real registry, a real audit chain and the session's Ray.

The models are small real ones (:mod:`tests.support.models`) in one MLflow
store shared by the module: ``diagnosis`` v1 is a signed champion, v2 was
never promoted; ``sentiment`` is a signed text champion.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import operator
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aipaas import audit
from aipaas.datasets import ingest, versioning
from aipaas.exceptions import (
    AipaasError,
    ConfigurationError,
    DatasetNotFoundError,
    DataValidationError,
    ModelNotFoundError,
    UnsignedVersionError,
)
from aipaas.inference import batch
from aipaas.inference.predictor import FieldSpec, LoadedModel, VersionMeta
from aipaas.schemas import ValidationReport
from aipaas.settings import Settings
from aipaas.training import registry, tags
from tests.conftest import make_settings
from tests.support.models import FEATURES, log_lgbm, log_text, tabular_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("batch") / "home"
    home.mkdir()
    s = make_settings(home)
    assert log_lgbm(s, "diagnosis", champion=True) == "1"
    assert log_lgbm(s, "diagnosis", champion=False, seed=1) == "2"
    log_text(s, "sentiment", champion=True)
    return s


def cells(n: int, seed: int = 5, *, first_id: int = 1000) -> pd.DataFrame:
    """Rows as a team would hand them over: an id, the features, extra columns."""
    x, y = tabular_data(n, seed)
    frame = pd.DataFrame({"id": np.arange(first_id, first_id + n)})
    frame[FEATURES] = x
    frame["diagnosis"] = y
    frame["site"] = "north"
    return frame


def oracle(s: Settings, version: str, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Labels and p(malignant) from the logged LightGBM model itself, not via aipaas."""
    import mlflow.lightgbm

    registry.connect(s)
    model = mlflow.lightgbm.load_model(f"models:/diagnosis/{version}")
    proba = model.predict_proba(frame[FEATURES])[:, list(model.classes_).index("malignant")]
    return model.predict(frame[FEATURES]), proba


def batch_events(s: Settings) -> list[dict]:
    return [r for r in audit.tail(s, 1000) if r["event"] == batch.AUDIT_EVENT]


def batch_runs(s: Settings) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=s.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(batch.experiment_name(s))
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_a_file_is_scored_keyed_by_id_with_lineage_in_mlflow_and_one_audit_record(
    store: Settings, tmp_path: Path, ray_session: None
) -> None:
    frame = cells(600)
    source = tmp_path / "cells.csv"
    frame.to_csv(source, index=False)
    out = tmp_path / "scored.parquet"
    events, runs = len(batch_events(store)), len(batch_runs(store))

    result = batch.predict_batch(store, "diagnosis", who="alice", input_file=source, output=out)

    assert (result.model, result.model_version, result.rows) == ("diagnosis", "1", 600)
    got = pd.read_parquet(out)
    assert list(got.columns) == ["id", "prediction", "proba_benign", "proba_malignant"]
    assert got["id"].tolist() == frame["id"].tolist()
    labels, p_malignant = oracle(store, "1", frame)
    assert got["prediction"].tolist() == labels.tolist()
    np.testing.assert_allclose(got["proba_malignant"], p_malignant, rtol=1e-9)
    file_sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert result.input_hash == file_sha
    assert result.output_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left

    # Lineage: one run in <experiment>-batch.
    all_runs = batch_runs(store)
    assert len(all_runs) == runs + 1
    run = next(r for r in all_runs if r.info.run_id == result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert store.mlflow.experiment + "-batch" == result.experiment == "aipaas-batch"
    assert run.data.params["model_version"] == "1"
    assert run.data.params["input_hash"] == file_sha
    assert run.data.params["output_sha256"] == result.output_sha256
    assert run.data.params["who"] == "alice"
    assert run.data.metrics["rows"] == 600.0 and run.data.metrics["seconds"] > 0
    assert run.data.tags[tags.KIND] == batch.KIND_BATCH

    # One audit record for the job, on a chain that still verifies.
    new = batch_events(store)[events:]
    assert len(new) == 1
    (event,) = new
    assert event["seq"] == result.audit_seq
    assert (event["owner"], event["model"], event["version"]) == ("alice", "diagnosis", "1")
    key = store.audit.hmac_key.get_secret_value().encode()
    assert event["input_hmac"] == hmac.new(key, source.read_bytes(), hashlib.sha256).hexdigest()
    detail = json.loads(event["detail"])
    assert detail["output_sha256"] == result.output_sha256
    assert detail["mlflow_run_id"] == result.mlflow_run_id
    assert detail["input_hash"] == file_sha and detail["rows"] == 600
    assert audit.verify(store).ok


def test_shards_run_on_ray_with_the_model_loaded_once_per_worker(
    store: Settings, ray_session: None
) -> None:
    scorer = batch.load_scorer(store, "diagnosis")
    batch_input = batch.BatchInput("file", "mem", "v", "h", cells(600))
    prepared = batch.prepare(scorer, batch_input)

    on_ray = batch.score(store, scorer, prepared, shard_rows=50)
    local = batch.score_local(scorer, prepared, shard_rows=50)

    assert on_ray.on_ray and (on_ray.shards, on_ray.rows) == (12, 600)
    # Every worker process that scored a shard fetched the model exactly once.
    assert on_ray.loads == on_ray.workers >= 1
    pd.testing.assert_frame_equal(on_ray.frame, local.frame)
    assert on_ray.frame["id"].tolist() == list(range(1000, 1600))


def test_rows_without_an_id_are_keyed_by_their_content_hash() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 1.0], "b": ["x", "y", "x"]})
    name, keys = batch.row_keys(frame)
    assert name == "row_hash"
    expected = pd.util.hash_pandas_object(frame, index=False)
    assert keys.tolist() == [f"{h:016x}" for h in expected]
    assert keys[0] == keys[2] != keys[1]  # identical rows, identical keys
    # An id column that is not a key (a repeat, an empty one) is not used as one.
    assert batch.row_keys(frame.assign(ID=[1, 1, 2]))[0] == "row_hash"
    assert batch.row_keys(frame.assign(row_id=[1, None, 2]))[0] == "row_hash"
    assert batch.row_keys(frame.assign(Row_ID=[7, 8, 9]))[0] == "Row_ID"


def test_a_text_model_scores_a_string_column(
    store: Settings, tmp_path: Path, ray_session: None
) -> None:
    source = tmp_path / "reviews.csv"
    pd.DataFrame({"text": ["great product", "awful service", "love it"]}).to_csv(
        source, index=False
    )
    out = tmp_path / "reviews-scored.csv"
    result = batch.predict_batch(store, "sentiment", who="bob", input_file=source, output=out)
    got = pd.read_csv(out)
    assert got["prediction"].tolist() == ["pos", "neg", "pos"]
    assert result.key_column == "row_hash" and got["row_hash"].str.len().eq(16).all()


def record_dataset(repo: Path, frame: pd.DataFrame, holdout_rows: int) -> str:
    """Files and dvc.lock entries as the data stages leave them; returns the version's hash."""
    d = repo / "data" / "breast_cancer"
    d.mkdir(parents=True, exist_ok=True)
    train, holdout = frame.iloc[holdout_rows:], frame.iloc[:holdout_rows]
    train.to_csv(d / "train.csv", index=False)
    holdout.to_csv(d / "holdout.csv", index=False)
    report = ValidationReport("breast_cancer", str(d / "raw.csv"), True, len(frame), 3)
    (d / "validation.json").write_text(json.dumps(report.to_dict()))
    md5 = {name: versioning.file_md5(d / f"{name}.csv") for name in ("train", "holdout")}
    outs = [
        {"path": f"data/breast_cancer/{n}.csv", "md5": m, "hash": "md5"} for n, m in md5.items()
    ]
    versioning.write_lock_entries(repo, {"split@breast_cancer": {"outs": outs}})
    return ingest.dataset_hash(md5["train"], md5["holdout"])


def as_read(folder: Path) -> pd.DataFrame:
    """The dataset's rows as pandas reads them back (CSV floats need not round-trip exactly)."""
    files = [folder / "train.csv", folder / "holdout.csv"]
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def dataset_settings(store: Settings, repo: Path) -> Settings:
    return store.model_copy(
        update={
            "data": store.data.model_copy(update={"dir": repo / "data"}),
            "versioning": store.versioning.model_copy(update={"repo": repo}),
        }
    )


def test_the_recorded_dataset_version_is_scored_train_then_holdout(
    store: Settings, tmp_path: Path, ray_session: None
) -> None:
    repo = tmp_path / "repo"
    frame = cells(200).drop(columns=["id", "site"])
    version = record_dataset(repo, frame, holdout_rows=50)
    s = dataset_settings(store, repo)
    out = tmp_path / "dataset.csv"

    result = batch.predict_batch(s, "diagnosis", who="carol", dataset="breast_cancer", output=out)

    assert (result.input, result.input_kind) == (f"breast_cancer@{version}", "dataset")
    assert result.input_hash == version and result.rows == 200
    got = pd.read_csv(out)
    ordered = as_read(repo / "data" / "breast_cancer")
    assert np.isclose(ordered["mean_radius"].iloc[0], frame["mean_radius"].iloc[50])
    assert got["row_hash"].tolist() == batch.row_keys(ordered)[1].tolist()
    assert got["prediction"].tolist() == oracle(store, "1", ordered)[0].tolist()
    run = next(r for r in batch_runs(store) if r.info.run_id == result.mlflow_run_id)
    assert run.data.tags[tags.DATASET] == "breast_cancer"
    assert run.data.tags[tags.DATA_HASH] == version

    # The same version named by its (abbreviated) hash, with a pinned promoted version.
    again = batch.predict_batch(
        s, "diagnosis", who="carol", dataset=f"breast_cancer@{version[:8]}", version="1"
    )
    assert again.input == result.input
    assert Path(again.output).parent == store.home / "batch"
    assert pd.read_csv(again.output).equals(got)


def _no_trace(s: Settings, tmp_path: Path, events: int, runs: int) -> None:
    assert len(batch_events(s)) == events, "a refused job must not be audited"
    assert len(batch_runs(s)) == runs, "a refused job must not be logged"
    assert not (tmp_path / "out.csv").exists()
    assert not list(tmp_path.glob(".out.csv*"))


@pytest.mark.parametrize(
    ("model", "version", "error", "message"),
    [
        ("nope", None, ModelNotFoundError, "no registered model 'nope' (registered: diagnosis"),
        ("diagnosis", "9", ModelNotFoundError, "has no registered version 9"),
        ("diagnosis", "2", UnsignedVersionError, "only a version that was promoted"),
    ],
)
def test_an_unknown_or_unpromoted_model_is_refused_before_anything_is_written(
    store: Settings, tmp_path: Path, model: str, version: str | None, error: type, message: str
) -> None:
    source = tmp_path / "in.csv"
    cells(10).to_csv(source, index=False)
    events, runs = len(batch_events(store)), len(batch_runs(store))
    with pytest.raises(error, match=message.replace("(", r"\(")):
        batch.predict_batch(
            store, model, who="x", input_file=source, output=tmp_path / "out.csv", version=version
        )
    _no_trace(store, tmp_path, events, runs)


def test_a_model_without_champion_is_refused(tmp_path: Path, settings: Settings) -> None:
    log_lgbm(settings, "diagnosis", champion=False)
    with pytest.raises(ModelNotFoundError, match="'diagnosis' has no champion.*--version N"):
        batch.load_scorer(settings, "diagnosis")


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[dict, type, str]]:
    no_area = tmp_path / "no_area.csv"
    cells(5).drop(columns=["mean_area"]).to_csv(no_area, index=False)
    words = tmp_path / "words.csv"
    cells(5).assign(mean_radius=["1.0", "big", "2", "3", "4"]).to_csv(words, index=False)
    empty_value = tmp_path / "empty_value.csv"
    cells(5).assign(mean_texture=[1.0, None, 2.0, 3.0, None]).to_csv(empty_value, index=False)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x00\xff\xfe" * 100)
    fake_parquet = tmp_path / "fake.parquet"
    fake_parquet.write_text("id,mean_radius\n1,2\n")
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(["id", *FEATURES]) + "\n")
    return {
        "missing column": (
            {"input_file": no_area},
            DataValidationError,
            "lacks 1 column\\(s\\) of diagnosis v1's signature: mean_area",
        ),
        "not numbers": (
            {"input_file": words},
            DataValidationError,
            "column 'mean_radius' must hold numbers .* 1 row\\(s\\) do not, e.g. 'big'",
        ),
        "empty values": (
            {"input_file": empty_value},
            DataValidationError,
            "'mean_texture' is required .* 2 row\\(s\\) are empty \\(rows 1, 4",
        ),
        "binary": ({"input_file": binary}, DataValidationError, "not a CSV file"),
        "not parquet": ({"input_file": fake_parquet}, DataValidationError, "not a Parquet file"),
        "no file": ({"input_file": tmp_path / "gone.csv"}, DataValidationError, "file not found"),
        "no rows": ({"input_file": header_only}, DataValidationError, "has no rows to score"),
        "other suffix": (
            {"input_file": tmp_path / "in.json"},
            ConfigurationError,
            "name a .csv or .parquet file",
        ),
        "unknown dataset": ({"dataset": "nope"}, DatasetNotFoundError, "unknown dataset 'nope'"),
        "no version recorded": (
            {"dataset": "breast_cancer"},
            DatasetNotFoundError,
            "no recorded version of breast_cancer",
        ),
        "unknown version": (
            {"dataset": "breast_cancer@0123abcd"},
            DatasetNotFoundError,
            "unknown version 0123abcd of breast_cancer",
        ),
        "empty version": ({"dataset": "breast_cancer@"}, ConfigurationError, "NAME@VERSION"),
        "neither": ({}, ConfigurationError, "--dataset NAME\\[@VERSION\\] or --input FILE"),
        "both": (
            {"dataset": "breast_cancer", "input_file": no_area},
            ConfigurationError,
            "one of them",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing column",
        "not numbers",
        "empty values",
        "binary",
        "not parquet",
        "no file",
        "no rows",
        "other suffix",
        "unknown dataset",
        "no version recorded",
        "unknown version",
        "empty version",
        "neither",
        "both",
    ],
)
def test_bad_input_is_refused_with_one_clear_line_and_nothing_written(
    store: Settings, tmp_path: Path, case: str
) -> None:
    s = dataset_settings(store, tmp_path / "repo")  # a checkout with no dataset version
    kwargs, error, message = _bad_inputs(tmp_path)[case]
    events, runs = len(batch_events(s)), len(batch_runs(s))
    with pytest.raises(error, match=message) as caught:
        batch.predict_batch(s, "diagnosis", who="x", output=tmp_path / "out.csv", **kwargs)
    assert "\n" not in str(caught.value)
    _no_trace(s, tmp_path, events, runs)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("out.txt", "name a .csv or .parquet file"),
        ("missing/out.csv", "the folder .*missing does not exist"),
        ("in.csv", "is the input file"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_scoring(
    store: Settings, tmp_path: Path, name: str, message: str
) -> None:
    source = tmp_path / "in.csv"
    cells(5).to_csv(source, index=False)
    before = source.read_bytes()
    events = len(batch_events(store))
    with pytest.raises(ConfigurationError, match=message):
        batch.predict_batch(store, "diagnosis", who="x", input_file=source, output=tmp_path / name)
    assert source.read_bytes() == before
    assert len(batch_events(store)) == events


def test_a_model_that_fails_in_a_worker_is_one_error_line(ray_session: None) -> None:
    broken = LoadedModel(
        name="broken",
        version="1",
        fields=(FieldSpec("a", "float"),),
        flavor="pyfunc",
        classes=None,
        meta=VersionMeta(),
        predict_fn=operator.itemgetter("no such column"),
    )
    prepared = batch.Prepared(np.zeros((4, 1)), np.arange(4), "row_hash", 4)
    with pytest.raises(AipaasError, match="broken v1 failed in a Ray worker: IndexError") as err:
        batch.score_on_ray(broken, prepared, workers=2, shard_rows=2)
    assert "\n" not in str(err.value)


def test_an_older_dataset_version_comes_from_the_dvc_remote_and_the_checkout_stays(
    store: Settings, tmp_path: Path, ray_session: None
) -> None:
    """``name@version`` of a version the checkout does not hold: pulled by the md5s a model
    version recorded for it (as training records them), into a temporary directory."""
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    versioning.init(repo)
    s = dataset_settings(store, repo)
    old = cells(80, seed=9).drop(columns=["id", "site"])
    staged = tmp_path / "staged"
    version = record_dataset(staged, old, holdout_rows=20)
    versioning.configure_remote(repo, s.versioning.remote_name, s.dvc_remote_url)
    md5 = {
        n: versioning.store(repo, staged / f"data/breast_cancer/{n}.csv", s.versioning.remote_name)
        for n in ("train", "holdout")
    }
    assert ingest.dataset_hash(md5["train"], md5["holdout"]) == version
    lock = versioning.read_lock(staged)["stages"]
    registry.connect(s)
    registry.set_tags(
        "diagnosis",
        "2",
        {tags.DATASET: "breast_cancer", tags.DATA_HASH: version, tags.DATA_LOCK: json.dumps(lock)},
    )
    # The DVC cache is emptied: the files must come from the remote.
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)

    out = tmp_path / "old.csv"
    result = batch.predict_batch(
        s, "diagnosis", who="dana", dataset=f"breast_cancer@{version}", output=out
    )

    assert result.input == f"breast_cancer@{version}" and result.rows == 80
    ordered = as_read(staged / "data" / "breast_cancer")
    assert pd.read_csv(out)["row_hash"].tolist() == batch.row_keys(ordered)[1].tolist()
    assert not (repo / "data").exists() and not (repo / "dvc.lock").exists()
