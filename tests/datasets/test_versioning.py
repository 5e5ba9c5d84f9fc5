"""The DVC adapter: dvc.lock and params.yaml as read, DVC's status and its errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from aipaas.datasets import versioning
from aipaas.exceptions import ConfigurationError, RemoteError, VersioningError
from tests.support.project import copy_project

DVC_ENV = {**os.environ, **versioning.DVC_ENV}


@pytest.mark.slow
def test_a_params_change_shows_in_dvc_status_for_the_stages_that_read_it(
    tmp_path_factory, tmp_path
):
    repo = copy_project(tmp_path_factory, tmp_path)
    targets = [f"{stage}@breast_cancer" for stage in ("ingest", "validate", "split")]
    assert versioning.status(repo, targets) == {}

    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("holdout_fraction: 0.2", "holdout_fraction: 0.25"))

    changed = versioning.status(repo, targets)
    assert changed == {
        "split@breast_cancer": [
            {"changed deps": {"params.yaml": {"data.holdout_fraction": "modified"}}}
        ]
    }

    params.write_text(params.read_text().replace("target: diagnosis", "target: label"))
    assert set(versioning.status(repo, targets)) == {"ingest@breast_cancer", "split@breast_cancer"}


def test_params_file_is_read_or_refused_clearly(tmp_path):
    assert versioning.params_file(tmp_path) == tmp_path / "params.yaml"
    with pytest.raises(ConfigurationError, match="no params file"):
        versioning.read_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("data:\n  seed: 7\n")
    assert versioning.read_params(tmp_path / "params.yaml") == {"data": {"seed": 7}}
    (tmp_path / "params.yaml").write_text("- a list\n")
    with pytest.raises(ConfigurationError, match="not a YAML mapping"):
        versioning.read_params(tmp_path / "params.yaml")


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
    assert versioning.is_transient("ERROR: Unable to acquire lock. Most likely ...")
    assert versioning.is_transient("ConnectionError: connection refused")
    assert not versioning.is_transient("ERROR: failed to push data: 1 files failed")


def test_the_remote_is_configured_once_then_read_not_rewritten(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=DVC_ENV
    )
    first, second = tmp_path / "remote-1", tmp_path / "remote-2"
    assert not versioning.remote_configured(tmp_path, "aipaas", str(first))

    versioning.configure_remote(tmp_path, "aipaas", str(first))
    local = tmp_path / ".dvc" / "config.local"
    assert versioning.remote_configured(tmp_path, "aipaas", str(first))
    written = local.stat().st_mtime_ns
    versioning.configure_remote(tmp_path, "aipaas", str(first))  # no dvc call: nothing rewritten
    assert local.stat().st_mtime_ns == written

    # Another home: the URL changes through DVC, options a team added stay.
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "modify", "--local", "aipaas", "jobs", "2"],
        cwd=tmp_path,
        check=True,
        env=DVC_ENV,
    )
    versioning.configure_remote(tmp_path, "aipaas", str(second))
    assert versioning.remote_configured(tmp_path, "aipaas", str(second))
    assert not versioning.remote_configured(tmp_path, "other", str(second))
    assert "jobs = 2" in local.read_text()
    local.write_text("[core\nbroken")
    assert not versioning.remote_configured(tmp_path, "aipaas", str(second))
