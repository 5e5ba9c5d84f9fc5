"""Promotion decisions on the audit chain: the one record of who moved ``champion``.

Every decision is an admin event in the hash-chained audit trail
(:mod:`aipaas.audit`), in order with everything else the platform did:
``model.promoted``, ``model.rejected``, ``model.rolled_back``, and
``model.approved`` when a person approved a promotion. The event's ``model``,
``version``, ``owner`` (who acted) and ``key_id`` (when an API key acted) are
columns; its ``detail`` is the rest of the :class:`PromotionRecord`: gates,
reasons, champion before and after, the approver and the signature of the
version's promotion record (:mod:`aipaas.training.attestation`).

MLflow tags say what was decided about one version; this says what happened
to a model over time, and nobody without the audit key can edit it unseen
(``aipaas audit verify``). Serving reads the model's latest servable decision
from here to refuse an alias moved back by hand to an old, once-promoted
version (:func:`latest_servable`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select

from aipaas import audit, db
from aipaas.exceptions import AuditIntegrityError
from aipaas.schemas import GateResult
from aipaas.settings import Settings

Action = Literal["promote", "rollback"]
# "unchanged" is returned (promoting the champion again) but never recorded.
Result = Literal["promoted", "rejected", "rolled-back", "unchanged"]

EVENTS: dict[str, str] = {
    "promoted": "model.promoted",
    "rejected": "model.rejected",
    "rolled-back": "model.rolled_back",
}
APPROVED = "model.approved"
# The decisions after which the decided version is the one that should serve.
SERVABLE_EVENTS = (EVENTS["promoted"], EVENTS["rolled-back"])
# Columns of the event, not repeated in its detail.
_COLUMNS = ("model", "version", "decided_by", "key_id")


@dataclass(frozen=True)
class PromotionRecord:
    """One decision about one model version: what promotion and rollback return.

    ``signature`` is that of the version's signed promotion record (None for
    a rejection, which signs nothing); ``key_id`` names the API key that
    acted, if one did.
    """

    model: str
    version: str
    action: Action
    result: Result
    decided_by: str
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    gates: list[GateResult] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    champion_before: str | None = None
    champion_after: str | None = None
    approved_by: str | None = None
    signature: str | None = None
    key_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromotionRecord:
        """The record from its JSON form; unknown keys (a newer writer's) are ignored."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["gates"] = [GateResult(**g) for g in known.get("gates") or []]
        return cls(**known)


def append(settings: Settings, record: PromotionRecord) -> audit.AuditRecord:
    """Append one decision to the audit chain, durably (committed when this returns)."""
    detail = {k: v for k, v in record.to_dict().items() if k not in _COLUMNS}
    return audit.append_event(
        settings,
        EVENTS[record.result],
        detail,
        model=record.model,
        version=record.version,
        owner=record.decided_by,
        key_id=record.key_id,
    )


def append_approval(
    settings: Settings,
    model: str,
    version: str,
    *,
    approver: str,
    at: str,
    comment: str = "",
    recorded_by: str,
    key_id: str | None = None,
) -> audit.AuditRecord:
    """Record a person's approval of a promotion; the approver is the event's owner."""
    detail = {"approver": approver, "at": at, "comment": comment, "recorded_by": recorded_by}
    return audit.append_event(
        settings, APPROVED, detail, model=model, version=version, owner=approver, key_id=key_id
    )


def _record(row: dict[str, Any]) -> PromotionRecord:
    detail = json.loads(row["detail"] or "{}")
    columns = {
        "model": row["model"],
        "version": row["version"],
        "decided_by": row["owner"],
        "key_id": row["key_id"],
    }
    return PromotionRecord.from_dict({**detail, **columns})


def _rows(
    settings: Settings, events: tuple[str, ...], model: str | None, *, newest: int | None = None
) -> list[dict[str, Any]]:
    t = db.audit_log
    stmt = select(t).where(t.c.kind == "admin", t.c.event.in_(events))
    if model is not None:
        stmt = stmt.where(t.c.model == model)
    stmt = stmt.order_by(t.c.seq.desc()).limit(newest) if newest else stmt.order_by(t.c.seq)
    with db.engine(settings).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt).all()]


def read(settings: Settings, model: str | None = None) -> list[PromotionRecord]:
    """Every decision (promoted, rejected, rolled back), oldest first, optionally one model's."""
    return [_record(row) for row in _rows(settings, tuple(EVENTS.values()), model)]


def last(settings: Settings, model: str) -> PromotionRecord | None:
    """The most recent decision about ``model``, or None."""
    rows = _rows(settings, tuple(EVENTS.values()), model, newest=1)
    return _record(rows[0]) if rows else None


def latest_servable(settings: Settings, model: str) -> PromotionRecord | None:
    """The latest promotion or rollback of ``model``: the version that should be champion.

    The event's own hash is checked (cheap; the walk of the whole chain is
    ``aipaas audit verify``), so an edited decision is not believed.

    Raises:
        AuditIntegrityError: that event's contents do not match its hash.
    """
    rows = _rows(settings, SERVABLE_EVENTS, model, newest=1)
    if not rows:
        return None
    row = rows[0]
    if audit.record_hash(audit.chain_key(settings), row) != row["hash"]:
        raise AuditIntegrityError(
            f"the audit trail's latest decision about {model} (seq {row['seq']}) was edited: "
            "its contents do not match its hash; run `aipaas audit verify`"
        )
    return _record(row)
