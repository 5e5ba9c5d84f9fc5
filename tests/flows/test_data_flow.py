"""The Prefect ``data`` flow on a temporary git + DVC project."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.states import Failed

from aipaas.datasets import ingest
from aipaas.exceptions import DataValidationError, RemoteError
from aipaas.schemas import DatasetVersion, ValidationReport
from aipaas.settings import Settings, get_settings
from flows._common import remote_unreachable
from flows.data import data_flow
from tests.support.project import bad_rows, copy_project, project_env


@pytest.fixture
def project(tmp_path_factory, tmp_path, home, use_settings: Callable[..., Settings]) -> Path:
    """A private reproduced project, and process settings (what the flow reads) on it."""
    repo = copy_project(tmp_path_factory, tmp_path)
    use_settings(env=project_env(repo, home))
    return repo


def _artifacts(flow_run_id) -> list:  # type: ignore[no-untyped-def]
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=["data-validation-breast-cancer"]),
            )
        )


@pytest.mark.slow
def test_data_flow_returns_the_version_and_fails_loudly_on_a_bad_suite(
    prefect_harness, project, home
):
    state = data_flow("breast_cancer", return_state=True)
    assert state.is_completed(), state.message
    version = state.result()
    assert version == ingest.recorded_version("breast_cancer", get_settings())
    assert type(version) is DatasetVersion  # a typed result, not a dict
    assert version.name == "breast_cancer" and version.rows == 569
    assert version.suite_passed is True
    assert version.train_path.is_file()
    assert any((home / "dvc-remote").rglob("*")), "the flow pushes to the remote"
    (passed,) = _artifacts(state.state_details.flow_run_id)
    assert passed.key == "data-validation-breast-cancer" and "passed" in passed.data

    bad_rows(project).to_csv(project / "data/incoming/breast_cancer/f.csv", index=False)
    state = data_flow("breast_cancer", return_state=True)

    assert state.is_failed()
    with pytest.raises(DataValidationError, match="failed its suite"):
        state.result()
    (report,) = _artifacts(state.state_details.flow_run_id)
    assert report.type == "markdown"
    assert "FAILED" in report.data
    assert "| expect_column_values_to_be_in_set | diagnosis | 3 | unsure |" in report.data


def test_only_remote_errors_are_retried():
    assert remote_unreachable(None, None, Failed(data=RemoteError("remote busy")))
    report = ValidationReport("breast_cancer", "raw.csv", success=False, rows=0, evaluated=0)
    failed_suite = DataValidationError("suite failed", report=report)
    assert not remote_unreachable(None, None, Failed(data=failed_suite))
    assert not remote_unreachable(None, None, Failed(data=ValueError("bug")))
