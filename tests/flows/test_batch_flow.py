"""The ``batch`` flow on the session's Prefect harness: real registry, real Ray, real audit."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aipaas import audit
from aipaas.exceptions import AipaasError, DataValidationError, ModelNotFoundError
from aipaas.settings import Settings
from tests.support.models import FEATURES, log_lgbm, tabular_data

pytestmark = pytest.mark.slow

STEPS = [
    "load model",
    "read input",
    "choose output",
    "check against signature",
    "score on Ray",
    "publish",
    "report",
]


@pytest.fixture
def flow_settings(
    settings: Settings,
    use_settings: Callable[..., Settings],
    prefect_harness: None,
    ray_session: None,
) -> Settings:
    """get_settings() (what the flow reads) on a temp home with a signed champion."""
    use_settings(settings)
    log_lgbm(settings, "diagnosis", champion=True)
    return settings


def _cells(path: Path, n: int = 30, drop: tuple[str, ...] = ()) -> Path:
    x, y = tabular_data(n, 4)
    frame = pd.DataFrame({"row_id": np.arange(n) * 10})
    frame[FEATURES] = x
    frame["diagnosis"] = y
    frame.drop(columns=list(drop)).to_csv(path, index=False)
    return path


def _task_runs(flow_run_id: object) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name.rsplit("-", 1)[0]: r.state.type.value for r in runs if r.state}


def _batch_records(s: Settings) -> list[dict]:
    return [r for r in audit.tail(s, 200) if r["event"] == "batch.predicted"]


def test_the_flow_scores_a_file_step_by_step_and_records_the_job(
    flow_settings: Settings, tmp_path: Path
) -> None:
    from flows.batch import batch_flow

    source = _cells(tmp_path / "cells.csv")
    out = tmp_path / "scored.csv"
    state = batch_flow("diagnosis", input_file=str(source), output=str(out), return_state=True)
    result = state.result()

    assert (result.rows, result.model_version, result.key_column) == (30, "1", "row_id")
    assert pd.read_csv(out)["row_id"].tolist() == list(range(0, 300, 10))
    # Who asked is this flow run, on the audit record.
    assert re.fullmatch(r"flow-run [0-9a-f-]{36} \(batch\)", result.who)
    (record,) = _batch_records(flow_settings)
    assert record["owner"] == result.who and record["seq"] == result.audit_seq
    assert json.loads(record["detail"])["mlflow_run_id"] == result.mlflow_run_id
    tasks = _task_runs(state.state_details.flow_run_id)
    assert {step: tasks.get(step) for step in STEPS} == dict.fromkeys(STEPS, "COMPLETED")


@pytest.mark.parametrize(
    ("model", "drop", "error", "message"),
    [
        ("nope", (), ModelNotFoundError, "no registered model 'nope'"),
        ("diagnosis", ("mean_texture",), DataValidationError, "signature: mean_texture"),
    ],
    ids=["unknown model", "missing column"],
)
def test_a_bad_job_fails_the_run_and_writes_nothing(
    flow_settings: Settings,
    tmp_path: Path,
    model: str,
    drop: tuple[str, ...],
    error: type,
    message: str,
) -> None:
    from flows.batch import batch_flow

    source = _cells(tmp_path / "cells.csv", drop=drop)
    out = tmp_path / "scored.csv"
    state = batch_flow(model, input_file=str(source), output=str(out), return_state=True)

    assert state.is_failed()
    with pytest.raises(error, match=message):
        state.result()
    assert not out.exists()
    assert _batch_records(flow_settings) == []
    tasks = _task_runs(state.state_details.flow_run_id)
    assert "score on Ray" not in tasks and "publish" not in tasks


def test_a_run_with_no_input_reads_the_models_own_dataset(
    flow_settings: Settings, tmp_path: Path
) -> None:
    """The deployment's default run (model only) scores the definition's dataset.

    This home has recorded no version of it, so the run fails naming it: the
    dataset the run went for is the definition's, not a missing-argument error.
    """
    from flows.batch import batch_flow

    out = tmp_path / "scored.csv"
    state = batch_flow("diagnosis", output=str(out), return_state=True)

    assert state.is_failed()
    with pytest.raises(AipaasError, match="breast_cancer"):
        state.result()
    assert not out.exists() and _batch_records(flow_settings) == []
