"""DVC versioning in a temporary git + DVC repository: versions, pushes, refusals."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from aipaas.datasets import ingest as data
from aipaas.datasets import versioning
from aipaas.exceptions import DataValidationError, RemoteError, VersioningError
from tests.support.project import bad_rows, copy_project, git, project_settings


def _remote_files(url: str) -> list[Path]:
    root = Path(url)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.slow
def test_version_is_dvc_lock_pushed_and_restorable_from_a_fresh_clone(
    tmp_path_factory, tmp_path, home
):
    repo = copy_project(tmp_path_factory, tmp_path)
    st = project_settings(repo, home)

    version = data.run_data_pipeline("breast_cancer", st, push=True)

    outs = versioning.locked_outs(repo, "split@breast_cancer")
    train_md5 = outs["data/breast_cancer/train.csv"]
    holdout_md5 = outs["data/breast_cancer/holdout.csv"]
    assert train_md5 == hashlib.md5(version.train_path.read_bytes()).hexdigest()
    assert version.hash == data.dataset_hash(train_md5, holdout_md5)
    assert version.rows == 569 and version.suite_passed and version.target == "diagnosis"
    assert version.train_path == repo / "data/breast_cancer/train.csv"
    assert version.git_commit == git(repo, "rev-parse", "HEAD")
    assert data.recorded_version("breast_cancer", st) == version
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
    restored = data.recorded_version("breast_cancer", clone_st)
    assert restored.hash == version.hash and restored.rows == version.rows


@pytest.mark.slow
def test_failed_suite_versions_nothing_then_good_incoming_rows_make_a_new_version(
    tmp_path_factory, tmp_path, home
):
    repo = copy_project(tmp_path_factory, tmp_path)
    st = project_settings(repo, home)
    before = data.recorded_version("breast_cancer", st)
    lock_before = (repo / "dvc.lock").read_text()
    incoming = repo / "data/incoming/breast_cancer"

    bad_rows(repo).to_csv(incoming / "feedback-1.csv", index=False)
    with pytest.raises(DataValidationError, match="failed its suite") as err:
        data.run_data_pipeline("breast_cancer", st, push=True)

    report = err.value.report
    (hit,) = [f for f in report.failed if f.column == "diagnosis"]
    assert hit.unexpected_count == 3 and hit.examples == ["unsure"]
    # Nothing was split, locked as good or pushed; training is refused.
    locked_split = versioning.read_lock(repo)["stages"]["split@breast_cancer"]
    assert locked_split == yaml.safe_load(lock_before)["stages"]["split@breast_cancer"]
    train_md5 = versioning.locked_outs(repo, "split@breast_cancer")["data/breast_cancer/train.csv"]
    assert versioning.file_md5(before.train_path) == train_md5
    assert _remote_files(st.dvc_remote_url) == []
    with pytest.raises(DataValidationError, match="failed its suite"):
        data.recorded_version("breast_cancer", st)

    # Fixed feedback: DVC reruns from ingest (its incoming dependency changed).
    good = bad_rows(repo).assign(diagnosis="malignant")
    good.to_csv(incoming / "feedback-1.csv", index=False)
    after = data.run_data_pipeline("breast_cancer", st, push=False)
    assert after.rows == 569 + 3
    assert after.hash != before.hash
    assert len(pd.read_csv(after.train_path)) + len(pd.read_csv(after.holdout_path)) == 572


def test_lock_reading_and_hashes(tmp_path):
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  split@x:\n    cmd: c\n    outs:\n"
        "    - path: data/x/train.csv\n      hash: md5\n      md5: abc\n      size: 3\n"
    )
    assert versioning.locked_outs(tmp_path, "split@x") == {"data/x/train.csv": "abc"}
    assert versioning.locked_outs(tmp_path, "split@y") == {}
    assert versioning.locked_outs(tmp_path / "nowhere", "split@x") == {}
    (tmp_path / "f").write_bytes(b"hello")
    assert versioning.file_md5(tmp_path / "f") == hashlib.md5(b"hello").hexdigest()
    assert versioning.relpath(tmp_path, tmp_path / "data/x/train.csv") == "data/x/train.csv"
    with pytest.raises(VersioningError, match="outside the DVC repository"):
        versioning.relpath(tmp_path / "a", tmp_path / "b")
    (tmp_path / "dvc.lock").write_text("stages: [unclosed")
    with pytest.raises(VersioningError, match="not valid YAML"):
        versioning.read_lock(tmp_path)


def test_dvc_errors_are_versioning_errors_with_dvc_output(tmp_path):
    assert versioning.git_commit(tmp_path) is None
    with pytest.raises(VersioningError, match="does not exist"):
        versioning.repro(tmp_path / "missing", ["split@x"])
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    with pytest.raises(VersioningError, match="dvc repro split@x") as err:
        versioning.repro(tmp_path, ["split@x"])
    assert "not a DVC repository" in str(err.value) or "you are not inside" in str(err.value)
    assert not isinstance(err.value, RemoteError)


def test_transient_remote_errors_are_recognised():
    assert versioning._looks_transient("ERROR: Unable to acquire lock. Most likely ...")
    assert versioning._looks_transient("ConnectionError: connection refused")
    assert not versioning._looks_transient("ERROR: failed to push data: 1 files failed")
