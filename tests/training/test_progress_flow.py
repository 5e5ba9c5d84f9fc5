"""The train flow's progress artifact: created when the search starts, moved by each trial.

The whole flow's artifact and trial log lines are checked on the one train
flow run of ``tests/flows/test_train_flow.py`` (a training costs about 20 s
of CPU; that module shares it).
"""

from __future__ import annotations

from typing import Any

import pytest

from aipaas.progress import StageEvent, TrialEvent

pytestmark = pytest.mark.slow


def _artifact(key: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert len(found) == 1, found
    return found[0]


def test_the_artifact_moves_with_each_trial(prefect_harness: None) -> None:
    from prefect import flow

    from flows.train import ArtifactProgress

    seen: list[tuple[float, str]] = []

    @flow(name="progress-artifact-test")
    def follow() -> None:
        progress = ArtifactProgress("progress-artifact-test")
        progress.on_stage(StageEvent("search", "started", detail="2 trials"))
        a = _artifact("progress-artifact-test")
        seen.append((float(a.data), a.description))
        for done, best in ((1, 0.91), (2, 0.95)):
            progress.on_trial(TrialEvent(done, 2, best, f"t{done}", True, best, metric="auc"))
            a = _artifact("progress-artifact-test")
            seen.append((float(a.data), a.description))

    follow()
    assert seen == [
        (0.0, "search started: 2 trials"),
        (50.0, "1/2 trials, best auc 0.9100"),
        (100.0, "2/2 trials, best auc 0.9500"),
    ]
