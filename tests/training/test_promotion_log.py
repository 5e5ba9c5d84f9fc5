"""Promotion decisions on the audit chain: readable per model, tamper-evident, no side file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from aipaas import audit, db
from aipaas.exceptions import AuditIntegrityError
from aipaas.schemas import GateResult
from aipaas.settings import Settings
from aipaas.training import promotion_log
from aipaas.training.promotion_log import PromotionRecord

GATE = GateResult("min roc_auc", True, 0.9, ">= 0.7")


def _record(model: str, version: str, result: str = "promoted", **more: object) -> PromotionRecord:
    action = "rollback" if result == "rolled-back" else "promote"
    return PromotionRecord(
        model=model,
        version=version,
        action=action,  # type: ignore[arg-type]
        result=result,  # type: ignore[arg-type]
        decided_by="tester",
        gates=[GATE],
        **more,  # type: ignore[arg-type]
    )


def test_decisions_are_chain_events_read_back_per_model(settings: Settings) -> None:
    assert promotion_log.read(settings) == []
    assert promotion_log.last(settings, "a") is None
    promotion_log.append(settings, _record("a", "1", signature="s1"))
    promotion_log.append(settings, _record("b", "1"))
    promotion_log.append(settings, _record("a", "2", "rejected", key_id="k1"))
    promotion_log.append_approval(
        settings, "a", "3", approver="erin", at="2026-01-01T00:00:00+00:00", recorded_by="tester"
    )
    promotion_log.append(settings, _record("a", "1", "rolled-back", signature="s3"))

    rows = [r for r in audit.tail(settings, 100) if r["kind"] == "admin"]
    assert [(r["event"], r["model"], r["version"], r["owner"]) for r in rows] == [
        ("model.promoted", "a", "1", "tester"),
        ("model.promoted", "b", "1", "tester"),
        ("model.rejected", "a", "2", "tester"),
        ("model.approved", "a", "3", "erin"),
        ("model.rolled_back", "a", "1", "tester"),
    ]
    assert rows[2]["key_id"] == "k1"
    assert json.loads(rows[0]["detail"])["gates"][0]["name"] == "min roc_auc"
    assert audit.verify(settings).ok
    assert not (settings.home / "promotions.jsonl").exists()

    history = promotion_log.read(settings, "a")
    assert [(r.version, r.result) for r in history] == [
        ("1", "promoted"),
        ("2", "rejected"),
        ("1", "rolled-back"),
    ]
    assert history[1].key_id == "k1" and history[0].gates == [GATE]
    last = promotion_log.last(settings, "a")
    assert last is not None and last.result == "rolled-back" and last.decided_by == "tester"
    decided = datetime.fromisoformat(last.at)
    assert timedelta(0) <= datetime.now(UTC) - decided < timedelta(minutes=1)
    servable = promotion_log.latest_servable(settings, "a")
    assert servable is not None and (servable.version, servable.signature) == ("1", "s3")
    assert promotion_log.latest_servable(settings, "nobody") is None


def test_an_edited_decision_breaks_the_chain_and_is_not_believed(settings: Settings) -> None:
    promotion_log.append(settings, _record("a", "1"))
    promotion_log.append(settings, _record("a", "2"))
    t = db.audit_log
    with db.engine(settings).begin() as conn:
        conn.execute(update(t).where(t.c.seq == 2).values(version="1"))
    report = audit.verify(settings)
    assert not report.ok and "seq 2: contents do not match its hash" in report.problems[0]
    with pytest.raises(AuditIntegrityError, match=r"seq 2\) was edited"):
        promotion_log.latest_servable(settings, "a")


def test_details_from_an_older_or_newer_writer_still_read(settings: Settings) -> None:
    detail = {k: v for k, v in _record("a", "1").to_dict().items() if k != "signature"}
    detail["added_later"] = "ignored"
    detail["gates"][0].pop("detail")  # written before gates had a detail
    audit.append_event(settings, "model.promoted", detail, model="a", version="1", owner="tester")
    [record] = promotion_log.read(settings)
    assert record.gates == [GateResult("min roc_auc", True, 0.9, ">= 0.7", "")]
    assert record.signature is None and record.decided_by == "tester"
