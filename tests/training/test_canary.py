"""Canary and shadow releases on the audit chain, against a real MLflow registry on SQLite.

A release starts only where a promotion could (a champion to compare with,
every gate passed, a person's approval when the definition asks), one at a
time; what serving follows is the signed start event, so a forged or edited
one is refused; ending it promoted moves ``champion`` through the usual
signed record, any other ending leaves the champion where it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import update

from aipaas import audit, db
from aipaas.exceptions import AuditIntegrityError, CanaryError, GateFailedError
from aipaas.modeldef import ModelDefinition, load_definition
from aipaas.settings import Settings
from aipaas.training import attestation, canary, promotion_log, registry, tags
from aipaas.training.gates import Approval
from tests.support.models import make_champion
from tests.support.registry import MODEL, register_tiny, tiny_champion, tiny_settings


def _tiny(s: Settings) -> ModelDefinition:
    return load_definition(MODEL, s.models_dir)


def _canary_alias() -> str | None:
    found = registry.get_alias(MODEL, tags.CANARY)
    return found.version if found else None


def test_a_release_starts_only_where_a_promotion_could(settings: Settings, tmp_path: Path) -> None:
    s = tiny_settings(settings, tmp_path)
    v1 = register_tiny(s)
    with pytest.raises(CanaryError, match="no champion to compare a canary with"):
        canary.start(s, _tiny(s), v1)
    make_champion(s, MODEL, v1)
    with pytest.raises(CanaryError, match="already champion"):
        canary.start(s, _tiny(s), v1)

    # A challenger failing a gate is rejected on the record, as by `aipaas promote`.
    slow = register_tiny(s, latency=900.0)
    with pytest.raises(GateFailedError, match="p99 latency ms"):
        canary.start(s, _tiny(s), slow)
    assert registry.get_version(MODEL, slow).tags[tags.PROMOTION_STATUS] == "rejected"
    assert [(r.version, r.result) for r in promotion_log.read(s, MODEL)][-1] == (slow, "rejected")
    assert canary.active(s, MODEL) is None and _canary_alias() is None

    good = register_tiny(s)
    state = canary.start(s, _tiny(s), good, percent=25, watch_s=120, decided_by="alice")
    assert (state.version, state.champion, state.mode, state.percent) == (good, v1, "canary", 25.0)
    assert state.until - state.started_at == pytest.approx(120.0)
    assert state.started_by == "alice" and state.policy.percent == 25.0
    assert canary.active(s, MODEL) == state and _canary_alias() == good
    with pytest.raises(CanaryError, match="is running until"):
        canary.start(s, _tiny(s), good, mode="shadow")
    # A share of 25% takes about a quarter of clients, the same ones each time.
    taken = [c for c in (f"key-{i}" for i in range(2000)) if state.takes(c)]
    assert 400 < len(taken) < 600 and taken == [c for c in taken if state.takes(c)]


def test_approval_is_needed_before_live_traffic_when_the_definition_asks(
    settings: Settings, tmp_path: Path
) -> None:
    s = tiny_settings(settings, tmp_path, approval=True)
    v1 = register_tiny(s)
    make_champion(s, MODEL, v1)
    v2 = register_tiny(s)
    with pytest.raises(GateFailedError, match="requires a person's approval"):
        canary.start(s, _tiny(s), v2)
    assert canary.active(s, MODEL) is None
    state = canary.start(s, _tiny(s), v2, approval=Approval(approved=True, reviewer="erin"))
    assert state.approved_by == "erin" and state.gates[-1].name == "approval"


def test_forged_or_edited_start_events_are_refused(settings: Settings, tmp_path: Path) -> None:
    s = tiny_settings(settings, tmp_path)
    v1 = register_tiny(s)
    make_champion(s, MODEL, v1)
    v2 = register_tiny(s)
    state = canary.start(s, _tiny(s), v2, percent=10, watch_s=60)

    # Someone widens the share in the database: the record no longer matches its hash.
    [row] = [r for r in audit.tail(s, 50) if r["event"] == canary.STARTED]
    detail = json.loads(row["detail"])
    with db.engine(s).begin() as conn:
        conn.execute(
            update(db.audit_log)
            .where(db.audit_log.c.seq == row["seq"])
            .values(detail=json.dumps({**detail, "percent": 100.0}, sort_keys=True))
        )
    with pytest.raises(AuditIntegrityError, match="was edited"):
        canary.active(s, MODEL)
    with db.engine(s).begin() as conn:
        conn.execute(
            update(db.audit_log)
            .where(db.audit_log.c.seq == row["seq"])
            .values(detail=row["detail"])
        )
    assert canary.active(s, MODEL) == state

    # A start event appended by someone without the audit key's signature.
    forged = dict(detail["attestation"], signature="0" * 64, result="canary")
    audit.append_event(
        s, canary.STARTED, {**detail, "attestation": forged}, model=MODEL, version=v2
    )
    with pytest.raises(AuditIntegrityError, match="no valid signature"):
        canary.active(s, MODEL)


def test_ending_promoted_moves_the_champion_signed_and_rolled_back_leaves_it(
    settings: Settings, tmp_path: Path
) -> None:
    s = tiny_settings(settings, tmp_path)
    v1 = register_tiny(s)
    make_champion(s, MODEL, v1)
    v2 = register_tiny(s)

    canary.start(s, _tiny(s), v2, watch_s=60)
    assert _canary_alias() == v2
    rolled = canary.end(s, MODEL, "rolled-back", reasons=["canary_error_rate = 0.2"])
    assert rolled.champion_after == v1 and tiny_champion() == v1
    assert canary.active(s, MODEL) is None and _canary_alias() is None
    with pytest.raises(CanaryError, match="no canary or shadow of tiny is running"):
        canary.end(s, MODEL, "stopped")

    canary.start(s, _tiny(s), v2, mode="shadow", watch_s=60)
    with pytest.raises(CanaryError, match="decides nothing"):
        canary.end(s, MODEL, "promoted")
    assert canary.end(s, MODEL, "completed").champion_after == v1

    canary.start(s, _tiny(s), v2, watch_s=60)
    ended = canary.end(s, MODEL, "promoted", decided_by="flow-run x (canary)")
    assert ended.champion_after == v2 and tiny_champion() == v2 and _canary_alias() is None
    info = registry.get_version(MODEL, v2)
    att = attestation.verify_current(s, MODEL, v2, info.tags)  # what serving checks
    assert att.result == "promoted" and att.decided_by == "flow-run x (canary)"
    prev = registry.get_alias(MODEL, tags.PREVIOUS_CHAMPION)
    assert prev is not None and prev.version == v1
    outcomes = [h["outcome"] for h in canary.history(s, MODEL) if h["event"] == canary.ENDED]
    assert outcomes == ["promoted", "completed", "rolled-back"]
