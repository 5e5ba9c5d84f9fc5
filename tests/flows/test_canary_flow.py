"""The ``canary`` flow on the session's Prefect harness, against a real MLflow store.

The flow runs in a thread while the test writes what serving would write
(audit records, predictions) into the real platform database: a challenger
that keeps failing is rolled back long before its window is over; a
good one, started beforehand as ``aipaas promote --canary --detach`` does,
is taken over by the flow and promoted at the end of its 6-second window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aipaas import audit
from aipaas.modeldef import load_definition
from aipaas.settings import Settings
from aipaas.training import canary, registry, tags
from tests.monitoring.test_canary_watch import Traffic
from tests.support.models import make_champion
from tests.support.registry import DEFINITION_FILE, MODEL, register_tiny, tiny_settings

pytestmark = pytest.mark.slow

WINDOW_S = 6.0
# The rollback test never waits for its window: a long one keeps it meaningful on a loaded host.
ROLLBACK_WINDOW_S = 30.0
POLICY = "canary=Canary(min_requests=5, check_every_s=1.0, max_error_rate=0.1),"


@pytest.fixture
def flow_settings(
    settings: Settings,
    tmp_path: Path,
    use_settings: Callable[..., Settings],
    prefect_harness: None,
) -> Settings:
    s = tiny_settings(settings, tmp_path)
    text = DEFINITION_FILE.format(approval=False).replace("gates=Gates(", POLICY + "gates=Gates(")
    text = text.replace("import Gates,", "import Canary, Gates,")
    (s.models_dir / "tiny.py").write_text(text)
    use_settings(s)
    return s


def _champion_and_challenger(s: Settings) -> tuple[str, str]:
    v1 = register_tiny(s)
    make_champion(s, MODEL, v1)
    return v1, register_tiny(s)


def _run_in_thread(**params: Any) -> tuple[threading.Thread, list[Any]]:
    from flows.canary import canary_flow

    out: list[Any] = []
    runner = threading.Thread(
        target=lambda: out.append(canary_flow(**params, return_state=True)), daemon=True
    )
    runner.start()
    return runner, out


def _wait_active(s: Settings, timeout: float = 60.0) -> canary.CanaryState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = canary.active(s, MODEL)
        if state is not None:
            return state
        time.sleep(0.2)
    raise AssertionError("the canary never started")


def _artifact(key: str) -> Any:
    import json

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = [a for a in client.read_latest_artifacts() if a.key == key]  # type: ignore[call-arg]
    assert found, f"no artifact {key}"
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


def test_a_failing_challenger_is_rolled_back_before_the_window_ends(
    flow_settings: Settings,
) -> None:
    s = flow_settings
    v1, v2 = _champion_and_challenger(s)
    runner, out = _run_in_thread(
        model=MODEL, version=v2, percent=50, watch=f"{ROLLBACK_WINDOW_S:g}s"
    )
    state = _wait_active(s)
    assert (state.version, state.champion, state.percent) == (v2, v1, 50.0)
    assert state.started_by.endswith("(canary)")  # this flow run decided to start it
    assert registry.get_alias(MODEL, tags.CANARY).version == v2  # type: ignore[union-attr]
    traffic = Traffic(s)
    try:
        traffic.many(10, v1)
        traffic.many(3, v1, fallback_of=v2)  # the challenger failed these
    finally:
        traffic.close()
    runner.join(60)
    [final] = out
    ended_at = time.time()
    assert ended_at < state.until, "rolled back only after the window"
    assert final.is_completed() and final.name == "Rolled back"
    assert "canary_error_rate" in (final.message or "")
    ended = final.result()
    assert ended.outcome == "rolled-back" and ended.champion_after == v1
    assert registry.get_alias(MODEL, tags.CHAMPION).version == v1  # type: ignore[union-attr]
    assert registry.get_alias(MODEL, tags.CANARY) is None
    assert canary.active(s, MODEL) is None
    [event] = [r for r in audit.tail(s, 200) if r["event"] == canary.ENDED]
    assert event["owner"] == ended.decided_by == state.started_by
    rows = _artifact("canary-tiny")
    error_row = next(r for r in rows if r["limit"] == "canary_error_rate")
    assert error_row["result"] == "FAIL" and error_row["value"] == "1.0"


def test_a_good_challenger_started_beforehand_is_watched_and_promoted(
    flow_settings: Settings,
) -> None:
    from aipaas.training import attestation

    s = flow_settings
    v1, v2 = _champion_and_challenger(s)
    started = canary.start(
        s, load_definition(MODEL, s.models_dir), v2, watch_s=WINDOW_S, decided_by="alice (cli)"
    )
    lines: list[str] = []
    from flows.canary import listening

    with listening(lines.append):
        runner, out = _run_in_thread(model=MODEL, version=v2)
        traffic = Traffic(s)
        try:
            for _ in range(8):
                traffic.request(v2, "yes", latency_ms=4.0)
                traffic.request(v1, "yes", latency_ms=4.0)
        finally:
            traffic.close()
        runner.join(60)
    [final] = out
    assert final.is_completed() and final.name == "Promoted", final.message
    ended = final.result()
    assert ended.outcome == "promoted" and ended.champion_after == v2
    assert time.time() >= started.until
    champion = registry.get_alias(MODEL, tags.CHAMPION)
    assert champion is not None and champion.version == v2
    attestation.verify_current(s, MODEL, v2, champion.tags)  # serving would load it
    assert any("challenger v2: 8 req" in line for line in lines), lines
    promoted = [r for r in audit.tail(s, 200) if r["event"] == "model.promoted"]
    assert promoted[-1]["version"] == v2 and promoted[-1]["owner"].endswith("(canary)")
