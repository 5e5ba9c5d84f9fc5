"""The ``promote`` flow on the session's Prefect harness, against a real MLflow store."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aipaas import audit
from aipaas.exceptions import GateFailedError
from aipaas.settings import Settings
from aipaas.training import registry, tags
from aipaas.training.promotion_log import PromotionRecord
from tests.support.registry import MODEL, register_tiny, tiny_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def flow_settings(
    settings: Settings,
    tmp_path: Path,
    use_settings: Callable[..., Settings],
    prefect_harness: None,
) -> Settings:
    """Settings the flow itself reads (through get_settings) pointed at a temp home."""
    s = tiny_settings(settings, tmp_path)
    use_settings(s)
    return s


def _artifact(key: str) -> list[dict]:
    import json

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()  # type: ignore[call-arg]
    found = [a for a in artifact if a.key == key]
    assert found, f"no artifact {key}"
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


def test_flow_promotes_then_fails_on_a_bad_challenger(flow_settings: Settings) -> None:
    from flows.promote import promote_flow

    v1 = register_tiny(flow_settings)
    result = promote_flow(MODEL)
    assert result.result == "promoted" and result.version == v1
    # Who decided is this flow run, on the version and on the audit chain.
    assert re.fullmatch(r"flow-run [0-9a-f-]{36} \(promote\)", result.decided_by)
    [event] = [r for r in audit.tail(flow_settings, 100) if r["event"] == "model.promoted"]
    assert event["owner"] == result.decided_by and event["version"] == v1
    assert [g.name for g in result.gates if not g.passed] == []
    assert registry.get_alias(MODEL, tags.CHAMPION).version == v1  # type: ignore[union-attr]
    assert promote_flow(MODEL, v1).result == "unchanged"

    bad = register_tiny(flow_settings, latency=900.0)
    state = promote_flow(MODEL, bad, return_state=True)
    assert state.is_failed()
    with pytest.raises(GateFailedError, match="p99 latency ms"):
        state.result()
    assert registry.get_alias(MODEL, tags.CHAMPION).version == v1  # type: ignore[union-attr]
    rows = _artifact("promotion-gates-tiny")
    assert {"gate": "p99 latency ms", "result": "FAIL"}.items() <= next(
        r for r in rows if r["gate"] == "p99 latency ms"
    ).items()


def test_flow_pauses_for_approval_and_records_the_reviewer(
    settings: Settings,
    tmp_path: Path,
    use_settings: Callable[..., Settings],
    prefect_harness: None,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.filters import FlowRunFilterStateType as StateTypeFilter
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    from flows.promote import promote_flow

    s = tiny_settings(settings, tmp_path, approval=True)
    use_settings(s)
    v1 = register_tiny(s)
    out: list[PromotionRecord] = []
    runner = threading.Thread(target=lambda: out.append(promote_flow(MODEL)), daemon=True)
    runner.start()
    paused = None
    deadline = time.monotonic() + 90
    with get_client(sync_client=True) as client:
        while paused is None and time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=StateTypeFilter(any_=[StateType.PAUSED]))
                )
            )
            paused = next((r for r in runs if r.parameters.get("model") == MODEL), None)
            time.sleep(0.5)
    assert paused is not None, "the promote flow never paused for approval"
    assert registry.get_alias(MODEL, tags.CHAMPION) is None  # nothing before approval
    resume_flow_run(paused.id, run_input={"approve": True, "reviewer": "erin"})
    runner.join(60)
    [record] = out
    assert record.result == "promoted" and record.approved_by == "erin"
    approved = [r for r in audit.tail(s, 100) if r["event"] == "model.approved"]
    assert [(r["owner"], r["version"]) for r in approved] == [("erin", v1)]
    assert [g.name for g in record.gates][-1] == "approval"
    assert registry.get_alias(MODEL, tags.CHAMPION).version == v1  # type: ignore[union-attr]
