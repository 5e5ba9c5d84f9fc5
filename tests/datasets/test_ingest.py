"""The data stages: ingest, validate, split, their params, the DVC pipeline, refusals."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from aipaas.datasets import ingest, versioning
from aipaas.exceptions import (
    ConfigurationError,
    DatasetNotFoundError,
    DataValidationError,
    VersioningError,
)
from aipaas.settings import PROJECT_ROOT, DatasetSpec, Settings
from tests.support.project import bad_rows, copy_project, git, project_env, project_settings


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
    return ingest.load_source(spec, Settings(_env_file=None))


def test_snake_case():
    assert ingest.snake_case("mean concave points") == "mean_concave_points"
    assert ingest.snake_case(" Worst Area (mm^2) ") == "worst_area_mm_2"


def test_ingest_writes_source_then_incoming_rows_in_name_order(st, source):
    incoming = ingest.paths("breast_cancer", st).incoming
    incoming.mkdir(parents=True)
    source.tail(2).assign(diagnosis="benign").to_csv(incoming / "b-feedback.csv", index=False)
    source.head(3).assign(diagnosis="malignant").to_csv(incoming / "a-feedback.csv", index=False)
    (incoming / "notes.txt").write_text("not a csv: ignored")

    raw = pd.read_csv(ingest.ingest("breast_cancer", st))

    assert len(raw) == 569 + 3 + 2
    assert list(raw.columns) == list(source.columns)
    assert raw["diagnosis"].iloc[569:].tolist() == ["malignant"] * 3 + ["benign"] * 2


def test_ingest_refuses_an_incoming_file_that_is_not_csv(st):
    incoming = ingest.paths("breast_cancer", st).incoming
    incoming.mkdir(parents=True)
    (incoming / "feedback.csv").write_bytes(gzip.compress(b"x,y\n1,2\n"))
    with pytest.raises(DataValidationError, match="feedback.csv") as err:
        ingest.ingest("breast_cancer", st)
    assert not ingest.paths("breast_cancer", st).raw.exists()
    report = err.value.report
    assert report is not None and not report.success
    assert report.path == str(incoming / "feedback.csv") and "not a CSV file" in str(report.error)


def test_validate_then_split_is_deterministic_with_both_classes_on_each_side(st):
    ingest.ingest("breast_cancer", st)
    report = ingest.validate("breast_cancer", st)
    assert report.success
    assert ingest.read_report("breast_cancer", st) == report
    assert report.data_docs and Path(report.data_docs).is_file()
    assert Path(report.data_docs).is_relative_to(st.home / "data_docs")

    train_path, holdout_path = ingest.split("breast_cancer", st)
    train, holdout = pd.read_csv(train_path), pd.read_csv(holdout_path)
    assert len(train) + len(holdout) == 569
    # A sample of the rows: the fraction and the class shares up to sampling noise.
    assert len(holdout) == pytest.approx(569 * st.data.holdout_fraction, abs=15)
    share = lambda f: (f["diagnosis"] == "malignant").mean()  # noqa: E731
    assert share(train) == pytest.approx(share(holdout), abs=0.1)
    assert set(train["diagnosis"]) == set(holdout["diagnosis"]) == {"benign", "malignant"}

    first = train_path.read_bytes(), holdout_path.read_bytes()
    ingest.split("breast_cancer", st)
    assert (train_path.read_bytes(), holdout_path.read_bytes()) == first


def test_appended_rows_never_move_an_old_row_and_duplicates_share_a_side(st):
    """Feedback appended to raw data: the old rows keep their side (no champion leak)."""
    ingest.ingest("breast_cancer", st)
    raw = pd.read_csv(ingest.paths("breast_cancer", st).raw)
    before = ingest.holdout_rows(raw, 0.2, seed=42)
    shifted = raw.sample(300, random_state=1).assign(mean_radius=lambda f: f.mean_radius * 1.45)
    grown = pd.concat([raw, shifted, raw.head(20)], ignore_index=True)
    after = ingest.holdout_rows(grown, 0.2, seed=42)
    assert (after.iloc[: len(raw)].to_numpy() == before.to_numpy()).all()
    assert (after.iloc[-20:].to_numpy() == before.iloc[:20].to_numpy()).all()  # the duplicates
    assert 0.15 < after.iloc[len(raw) : len(raw) + 300].mean() < 0.25  # new rows: a fair share
    # Another seed is another partition, as stable.
    assert (ingest.holdout_rows(raw, 0.2, seed=7) != before).any()


def test_a_class_missing_from_one_side_is_named() -> None:
    frame = pd.DataFrame({"y": ["a", "a", "b", "b", "rare"]})
    train, holdout = frame.iloc[[0, 2, 4]], frame.iloc[[1, 3]]
    assert ingest.one_sided_classes(train, holdout, "y") == ["rare"]
    assert ingest.one_sided_classes(frame.iloc[[0, 2]], frame.iloc[[1, 3]], "y") == []


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
    p = ingest.paths("breast_cancer", st)
    p.dir.mkdir(parents=True)
    _bad_raw(kind, source, p.raw)

    report = ingest.validate("breast_cancer", st)

    assert not report.success
    assert report.error or report.failed
    # The report is recorded for the split stage (and the Prefect artifact) to read.
    assert not ingest.read_report("breast_cancer", st).success
    with pytest.raises(DataValidationError, match="refusing to split") as err:
        ingest.split("breast_cancer", st)
    assert err.value.report == report
    assert not p.train.exists() and not p.holdout.exists()


def test_split_refuses_before_validation_and_after_raw_changed(st, source):
    ingest.ingest("breast_cancer", st)
    with pytest.raises(DatasetNotFoundError, match="has not been validated"):
        ingest.split("breast_cancer", st)
    ingest.validate("breast_cancer", st)
    p = ingest.paths("breast_cancer", st)
    pd.concat([source, source.head(5)]).to_csv(p.raw, index=False)
    with pytest.raises(DataValidationError, match="validated with 569"):
        ingest.split("breast_cancer", st)


def test_validate_a_path_records_nothing(st, source, tmp_path):
    other = tmp_path / "other.csv"
    source.to_csv(other, index=False)
    assert ingest.validate("breast_cancer", st, path=other).success
    assert not ingest.paths("breast_cancer", st).validation.exists()


def test_csv_source_lives_under_data_sources(st, source, tmp_path):
    sources = tmp_path / "data" / "sources"
    sources.mkdir(parents=True)
    (sources / "mine.csv").write_text(source.head(150).to_csv(index=False))
    spec = DatasetSpec(source="csv:data/sources/mine.csv", target="diagnosis")
    assert len(ingest.load_source(spec, st)) == 150
    with pytest.raises(DataValidationError, match="file not found") as err:
        ingest.load_source(DatasetSpec(source="csv:data/sources/nope.csv", target="y"), st)
    assert err.value.report is not None and err.value.report.path.endswith("nope.csv")
    # Anywhere else DVC would not see it change: refused, with where to put it.
    (tmp_path / "elsewhere.csv").write_text(source.head(150).to_csv(index=False))
    with pytest.raises(ConfigurationError, match="put the file under"):
        ingest.load_source(DatasetSpec(source="csv:elsewhere.csv", target="diagnosis"), st)


@pytest.mark.parametrize("source_name", ["sklearn:nope", "s3:bucket/x.csv", "breast_cancer"])
def test_unknown_source_is_a_configuration_error(st, source_name):
    with pytest.raises(ConfigurationError, match="source"):
        ingest.load_source(DatasetSpec(source=source_name, target="y"), st)


def test_unknown_dataset_and_never_produced(st):
    with pytest.raises(DatasetNotFoundError, match="declared: breast_cancer"):
        ingest.recorded_version("nope", st)
    with pytest.raises(DatasetNotFoundError, match="no recorded version"):
        ingest.recorded_version("breast_cancer", st)
    assert ingest.list_datasets(st) == [
        ingest.DatasetStatus(
            name="breast_cancer",
            source="sklearn:breast_cancer",
            target="diagnosis",
            suite="not run",
        ),
        ingest.DatasetStatus(
            name="quotes",
            source="fortunes:computers,people,politics,science",
            target="topic",
            suite="not run",
        ),
    ]


# ---------------------------------------------------------------- the fortunes source


def _fortunes(directory: Path, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_fortunes_entries_are_normalised_labelled_and_deduplicated(tmp_path: Path) -> None:
    d = _fortunes(
        tmp_path / "fortunes",
        alpha="One  quote\non two lines.\n\t\t-- Someone\n%\nB\bBold and _\bu_\bn_\bder.\n%\n"
        "Shared text.\n%\nOne quote on two lines. -- Someone\n%\n\n%\n",
        beta="Shared text.\n%\nOnly in beta.\n",
    )
    frame = ingest.load_fortunes(["alpha", "beta"], "topic", d)
    assert frame.to_dict("records") == [
        {"text": "One quote on two lines. -- Someone", "topic": "alpha"},
        {"text": "Bold and under.", "topic": "alpha"},
        {"text": "Only in beta.", "topic": "beta"},
    ]  # "Shared text." has two labels: dropped; the repeat in alpha kept once
    again = ingest.load_fortunes(["alpha", "beta"], "topic", d)
    pd.testing.assert_frame_equal(frame, again)


def test_a_missing_fortunes_file_names_the_debian_package(tmp_path: Path) -> None:
    d = _fortunes(tmp_path / "fortunes", alpha="A quote.\n")
    with pytest.raises(DatasetNotFoundError, match=r"Debian's `fortunes` package") as err:
        ingest.load_fortunes(["alpha", "gamma"], "topic", d)
    assert str(d / "gamma") in str(err.value)


@pytest.mark.parametrize("source_name", ["fortunes:", "fortunes:../etc/passwd", "fortunes:a,,B"])
def test_bad_fortunes_categories_are_a_configuration_error(st, source_name):
    with pytest.raises(ConfigurationError, match="fortunes"):
        ingest.load_source(DatasetSpec(source=source_name, target="topic"), st)


def test_the_declared_quotes_source_reads_the_installed_package(st):
    frame = ingest.load_source(ingest.spec("quotes", st), st)
    assert frame["topic"].value_counts().to_dict() == {
        "people": 1251, "computers": 1051, "politics": 703, "science": 625,
    }  # fmt: skip


# ---------------------------------------------------------------- stage params


@pytest.fixture
def project(tmp_path: Path, home: Path) -> Path:
    """A directory holding the project's params.yaml: enough for the params checks."""
    shutil.copy2(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_dvc_yaml_lists_each_stages_params_and_the_code_it_runs():
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(ingest.STAGES)
    runs = {"aipaas/cli/data.py", "aipaas/datasets/ingest.py", "aipaas/datasets/validation.py"}
    for name, stage in stages.items():
        do = stage["do"]
        assert do["cmd"] == f"aipaas data {name} ${{key}}"
        expected = [key.format(dataset="${key}") for key in ingest.STAGE_PARAMS[name]]
        assert do.get("params", []) == expected, name
        assert runs <= set(do["deps"]), name
        for dep in do["deps"]:
            assert "${key}" in dep or (PROJECT_ROOT / dep).exists(), dep
    # ingest and split read their params through the DVC adapter.
    for name in ("ingest", "split"):
        assert "aipaas/datasets/versioning.py" in stages[name]["do"]["deps"]


def test_an_environment_override_of_a_stage_param_is_refused(project, use_settings):
    env = project_env(project, project / "home") | {"AIPAAS_DATA__HOLDOUT_FRACTION": "0.3"}
    s = use_settings(env=env)
    assert s.data.holdout_fraction == 0.3  # what the override would have done

    with pytest.raises(ConfigurationError) as err:
        ingest.stage_settings("split", "breast_cancer", s)
    message = str(err.value)
    assert "data.holdout_fraction is 0.3" in message and "0.2 in" in message
    assert "AIPAAS_DATA__HOLDOUT_FRACTION" in message
    assert f"set data.holdout_fraction in {project / 'params.yaml'}" in message
    # ingest does not depend on it; the pipeline refuses before DVC runs anything.
    assert ingest.stage_settings("ingest", "breast_cancer", s) is s
    with pytest.raises(ConfigurationError, match="data.holdout_fraction"):
        ingest.run_data_pipeline("breast_cancer", s, push=False)
    assert not (project / "data").exists()


def test_a_dotenv_override_of_a_dataset_is_refused(project, use_settings, monkeypatch):
    (project / ".env").write_text("AIPAAS_DATASETS__BREAST_CANCER__TARGET=label\n")
    monkeypatch.chdir(project)
    s = use_settings(env=project_env(project, project / "home"))
    assert s.datasets["breast_cancer"].target == "label"
    for stage in ("ingest", "split"):
        with pytest.raises(ConfigurationError, match="datasets.breast_cancer is .*'label'"):
            ingest.stage_settings(stage, "breast_cancer", s)


def test_stage_params_equal_to_params_yaml_are_used(project, use_settings):
    # An override that repeats params.yaml changes nothing DVC does not know.
    s = use_settings(env=project_env(project, project / "home") | {"AIPAAS_DATA__SEED": "42"})
    assert ingest.stage_settings("split", "breast_cancer", s) is s
    assert ingest.tracked_params("breast_cancer", project / "params.yaml") == {
        "data.holdout_fraction": 0.2,
        "data.seed": 42,
        "datasets.breast_cancer": {
            "source": "sklearn:breast_cancer",
            "target": "diagnosis",
            "task": "classification",
        },
    }


def test_a_dataset_params_yaml_does_not_declare_is_refused(project, home):
    s = Settings(
        _env_file=None,
        home=home,
        versioning={"repo": project},
        datasets={"extra": {"source": "sklearn:iris", "target": "species"}},
    )
    with pytest.raises(ConfigurationError, match="datasets.extra is .* but not declared in"):
        ingest.stage_settings("ingest", "extra", s)
    (project / "params.yaml").unlink()
    with pytest.raises(ConfigurationError, match="no params file"):
        ingest.stage_settings("ingest", "extra", s)


# ---------------------------------------------------------------- the DVC pipeline


def _remote_files(url: str) -> list[Path]:
    root = Path(url)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.slow
def test_version_is_dvc_lock_pushed_and_restorable_from_a_fresh_clone(
    tmp_path_factory, tmp_path, home
):
    repo = copy_project(tmp_path_factory, tmp_path)
    st = project_settings(repo, home)

    version = ingest.run_data_pipeline("breast_cancer", st, push=True)

    outs = versioning.locked_outs(repo, "split@breast_cancer")
    train_md5 = outs["data/breast_cancer/train.csv"]
    holdout_md5 = outs["data/breast_cancer/holdout.csv"]
    assert train_md5 == hashlib.md5(version.train_path.read_bytes()).hexdigest()
    assert version.hash == ingest.dataset_hash(train_md5, holdout_md5)
    assert version.rows == 569 and version.suite_passed and version.target == "diagnosis"
    assert version.train_path == repo / "data/breast_cancer/train.csv"
    assert version.git_commit == git(repo, "rev-parse", "HEAD")
    assert ingest.recorded_version("breast_cancer", st) == version
    # Four outputs (raw, validation report, train, holdout) are in the remote under home.
    assert st.dvc_remote_url.startswith(str(home))
    assert len(_remote_files(st.dvc_remote_url)) == 4

    # A fresh clone has dvc.lock but no data; `dvc pull` restores the same version.
    git(repo, "add", "dvc.lock", "data")
    git(repo, "commit", "-q", "-m", "data version")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    clone_st = project_settings(clone, home)
    assert not (clone / "data/breast_cancer/train.csv").exists()
    versioning.configure_remote(clone, "aipaas", st.dvc_remote_url)
    versioning.pull(clone, ["split@breast_cancer", "validate@breast_cancer"])
    restored = ingest.recorded_version("breast_cancer", clone_st)
    assert restored.hash == version.hash and restored.rows == version.rows


@pytest.mark.slow
def test_failed_suite_versions_nothing_then_good_incoming_rows_make_a_new_version(
    tmp_path_factory, tmp_path, home
):
    repo = copy_project(tmp_path_factory, tmp_path)
    st = project_settings(repo, home)
    before = ingest.recorded_version("breast_cancer", st)
    lock_before = (repo / "dvc.lock").read_text()
    incoming = repo / "data/incoming/breast_cancer"

    bad_rows(repo).to_csv(incoming / "feedback-1.csv", index=False)
    with pytest.raises(DataValidationError, match="failed its suite") as err:
        ingest.run_data_pipeline("breast_cancer", st, push=True)

    report = err.value.report
    assert report is not None
    (hit,) = [f for f in report.failed if f.column == "diagnosis"]
    assert hit.unexpected_count == 3 and hit.examples == ["unsure"]
    # Nothing was split, locked as good or pushed; training is refused.
    locked_split = versioning.read_lock(repo)["stages"]["split@breast_cancer"]
    assert locked_split == yaml.safe_load(lock_before)["stages"]["split@breast_cancer"]
    train_md5 = versioning.locked_outs(repo, "split@breast_cancer")["data/breast_cancer/train.csv"]
    assert versioning.file_md5(before.train_path) == train_md5
    assert _remote_files(st.dvc_remote_url) == []
    with pytest.raises(DataValidationError, match="failed its suite"):
        ingest.recorded_version("breast_cancer", st)

    # Fixed feedback: DVC reruns from ingest (its incoming dependency changed).
    good = bad_rows(repo).assign(diagnosis="malignant")
    good.to_csv(incoming / "feedback-1.csv", index=False)
    after = ingest.run_data_pipeline("breast_cancer", st, push=False)
    assert after.rows == 569 + 3
    assert after.hash != before.hash
    assert len(pd.read_csv(after.train_path)) + len(pd.read_csv(after.holdout_path)) == 572


@pytest.mark.slow
def test_an_override_changes_no_version_even_when_dvc_runs_the_stage(
    tmp_path_factory, tmp_path, home, use_settings: Callable[..., Settings]
):
    repo = copy_project(tmp_path_factory, tmp_path)
    lock = (repo / "dvc.lock").read_bytes()
    train = (repo / "data/breast_cancer/train.csv").read_bytes()
    s = use_settings(env=project_env(repo, home) | {"AIPAAS_DATA__SEED": "7"})

    with pytest.raises(ConfigurationError, match="data.seed is 7"):
        ingest.run_data_pipeline("breast_cancer", s, push=False)
    # A plain `dvc repro` with the override set: the split command itself refuses it.
    env = ingest.stage_environment(s) | {"AIPAAS_DATA__SEED": "7"}
    with pytest.raises(VersioningError, match="data.seed is 7"):
        versioning.repro(repo, ["--force", "--single-item", "split@breast_cancer"], env=env)

    # DVC removed the outputs before running the stage, but recorded nothing new:
    # checking out dvc.lock's version brings back exactly the old files.
    assert (repo / "dvc.lock").read_bytes() == lock
    versioning.checkout(repo, ["split@breast_cancer"])
    assert versioning.status(repo, ["split@breast_cancer"]) == {}
    assert ingest.recorded_version("breast_cancer", s).train_path.read_bytes() == train
