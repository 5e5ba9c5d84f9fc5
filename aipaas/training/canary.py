"""Canary and shadow releases: a gated challenger meets live traffic beside the champion.

A canary is a promotion that waits for live evidence. It starts only where a
promotion could: the challenger passes every gate (and a person's approval,
when the definition asks for one). Then, instead of moving ``champion``, a
signed ``model.canary_started`` event goes on the audit chain, naming the
version, the mode, the share of traffic and the window. Every serving replica
reads the model's latest canary event from the chain (:func:`active`), checks
its hash and signature as it checks a promotion's, and:

- ``canary``: sends the clients whose key falls in the share
  (:func:`takes`, stable per key, so one client sees one version) to the
  challenger; a challenger that fails a request is answered by the champion
  and the failure is recorded as evidence;
- ``shadow``: answers every request with the champion and gives the
  challenger a copy afterwards, off the request path, keeping both outputs.

The canary flow reads the evidence and ends the release with a
``model.canary_ended`` event (:func:`end`): ``promoted`` (every limit held
over the window: the promotion is recorded through
:func:`aipaas.training.promote.record_decision`, like any other),
``rolled-back`` (a limit broke: traffic returns to the champion at once),
``inconclusive`` (too few requests to judge: nothing changes), ``stopped``
(a person stopped it) or ``completed`` (a shadow run's report is written).
Both events bump the model's serving signal, so replicas follow within a tick.

The MLflow alias ``canary`` points at the version while a release runs, for
people looking at the registry; serving never trusts it, only the chain.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select

from aipaas import audit, db
from aipaas.exceptions import AuditIntegrityError, CanaryError, GateFailedError
from aipaas.modeldef import Canary, ModelDefinition
from aipaas.schemas import GateResult
from aipaas.settings import Settings
from aipaas.training import attestation, promote, registry, signals, tags
from aipaas.training.gates import Approval, failure_reasons, format_gates, with_approval
from aipaas.training.promotion_log import PromotionRecord

Mode = Literal["canary", "shadow"]
Outcome = Literal["promoted", "rolled-back", "inconclusive", "stopped", "completed"]

STARTED = "model.canary_started"
ENDED = "model.canary_ended"
EVENTS = (STARTED, ENDED)
OUTCOMES: tuple[Outcome, ...] = ("promoted", "rolled-back", "inconclusive", "stopped", "completed")

# The signed record of a canary start: an attestation with this action and result.
ACTION = "canary"


@dataclass(frozen=True)
class CanaryState:
    """A release running now, as its ``model.canary_started`` event recorded it.

    ``limits`` is the definition's :class:`~aipaas.modeldef.Canary` at the
    start (the flow judges by these, even if the definition changes meanwhile);
    ``champion`` the version it is compared with; times are epoch seconds.
    """

    model: str
    version: str
    mode: Mode
    percent: float
    champion: str
    started_at: float
    until: float
    started_by: str
    seq: int
    signature: str
    limits: dict[str, Any] = field(default_factory=dict)
    gates: list[GateResult] = field(default_factory=list)
    approved_by: str | None = None

    @property
    def policy(self) -> Canary:
        return Canary(**{k: v for k, v in self.limits.items() if k in Canary.__dataclass_fields__})

    def remaining_s(self, now: float | None = None) -> float:
        return max(0.0, self.until - (time.time() if now is None else now))

    def takes(self, client: str) -> bool:
        """Whether ``client`` (a key id, else the caller's address) is sent to the challenger."""
        return self.mode == "canary" and bucket(client, self.model) < self.percent

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CanaryEnd:
    """How a release ended: the ``model.canary_ended`` event's contents."""

    model: str
    version: str
    mode: Mode
    outcome: Outcome
    decided_by: str
    at: str
    reasons: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    started_seq: int | None = None
    champion_after: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bucket(client: str, model: str) -> float:
    """``client``'s place in [0, 100) for ``model``: stable, spread evenly, per model."""
    digest = hashlib.blake2b(f"{model}\0{client}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 / 100.0


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- reading the chain ------------------------------------------------------------


def _latest_row(settings: Settings, model: str) -> dict[str, Any] | None:
    t = db.audit_log
    stmt = (
        select(t)
        .where(t.c.kind == "admin", t.c.event.in_(EVENTS), t.c.model == model)
        .order_by(t.c.seq.desc())
        .limit(1)
    )
    with db.engine(settings).connect() as conn:
        row = conn.execute(stmt).first()
    return dict(row._mapping) if row is not None else None


def _checked(settings: Settings, row: dict[str, Any]) -> dict[str, Any]:
    if audit.record_hash(audit.chain_key(settings), row) != row["hash"]:
        raise AuditIntegrityError(
            f"the audit trail's canary event about {row['model']} (seq {row['seq']}) was "
            "edited: its contents do not match its hash; run `aipaas audit verify`"
        )
    detail: dict[str, Any] = json.loads(row["detail"] or "{}")
    return detail


def _state(settings: Settings, row: dict[str, Any]) -> CanaryState:
    detail = _checked(settings, row)
    try:
        att = attestation.Attestation.from_tag(json.dumps(detail["attestation"]))
        mode, percent = detail["mode"], float(detail["percent"])
        champion, started_at = str(detail["champion"]), float(detail["started_at"])
        until = float(detail["until"])
    except (KeyError, TypeError, ValueError) as err:
        raise AuditIntegrityError(
            f"the canary of {row['model']} v{row['version']} (seq {row['seq']}) is malformed "
            f"({type(err).__name__}: {err}): it was not started by `aipaas promote --canary`"
        ) from err
    if (
        att.model != row["model"]
        or att.version != row["version"]
        or att.action != ACTION
        or not attestation.signature_valid(settings, att)
    ):
        raise AuditIntegrityError(
            f"the canary of {row['model']} v{row['version']} (seq {row['seq']}) has no valid "
            "signature: it was not started by `aipaas promote --canary`"
        )
    return CanaryState(
        model=row["model"],
        version=row["version"],
        mode=mode,
        percent=percent,
        champion=champion,
        started_at=started_at,
        until=until,
        started_by=row["owner"] or "",
        seq=int(row["seq"]),
        signature=att.signature,
        limits=dict(detail.get("limits") or {}),
        gates=[GateResult(**g) for g in detail.get("gates") or []],
        approved_by=att.approved_by,
    )


def active(settings: Settings, model: str) -> CanaryState | None:
    """The release running for ``model`` now, None if there is none.

    Raises:
        AuditIntegrityError: the latest canary event was edited or never signed
            (serving then sends no traffic to any challenger).
    """
    row = _latest_row(settings, model)
    if row is None or row["event"] != STARTED:
        return None
    return _state(settings, row)


def history(settings: Settings, model: str, limit: int = 20) -> list[dict[str, Any]]:
    """The model's canary events, newest first: ``{"event", "seq", "ts", "owner", ...detail}``."""
    t = db.audit_log
    stmt = (
        select(t)
        .where(t.c.kind == "admin", t.c.event.in_(EVENTS), t.c.model == model)
        .order_by(t.c.seq.desc())
        .limit(limit)
    )
    with db.engine(settings).connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    return [
        {
            "event": r["event"],
            "seq": r["seq"],
            "ts": r["ts"],
            "owner": r["owner"],
            "version": r["version"],
            **json.loads(r["detail"] or "{}"),
        }
        for r in rows
    ]


# --- starting and ending -----------------------------------------------------------


def start(
    settings: Settings,
    definition: ModelDefinition,
    version: str | None = None,
    *,
    mode: Mode = "canary",
    percent: float | None = None,
    watch_s: float | None = None,
    decided_by: str | None = None,
    approval: Approval | None = None,
    key_id: str | None = None,
    assessment: promote.Assessment | None = None,
) -> CanaryState:
    """Check the gates, then start a canary (or shadow) of ``version`` (default: challenger).

    A challenger that fails its gates is rejected on the record, as by
    ``aipaas promote``; nothing starts. ``percent`` and ``watch_s`` default
    to the definition's :class:`~aipaas.modeldef.Canary`.

    Raises:
        CanaryError: a release already runs for the model, it has no champion
            to compare with, or the version is the champion.
        GateFailedError: a gate failed (the rejection is on record), or
            approval is required and missing.
    """
    model = definition.name
    decider = decided_by or promote.default_decider()
    policy = definition.canary
    percent = policy.percent if percent is None else float(percent)
    watch_s = policy.watch_s if watch_s is None else float(watch_s)
    # The same checks as the policy's, for values given on the command line.
    limits = asdict(Canary(**{**asdict(policy), "percent": percent, "watch_s": watch_s}))
    running = active(settings, model)
    if running is not None:
        raise CanaryError(
            f"a {running.mode} of {model} v{running.version} is running until "
            f"{_iso(running.until)}; stop it first: `aipaas canary stop {model}`"
        )
    found = assessment or promote.assess(settings, definition, version)
    if found.champion is None:
        raise CanaryError(
            f"{model} has no champion to compare a {mode} with; promote a first version "
            f"with `aipaas promote {model}`"
        )
    if found.already_champion:
        raise CanaryError(f"{model} v{found.version} is already champion; nothing to try")
    if not found.auto_passed:
        promote.decide_promotion(settings, found, decided_by=decider, key_id=key_id)  # raises
    if found.awaits_approval and approval is None:
        raise GateFailedError(
            f"{model} v{found.version} passed its automatic gates but its definition requires "
            f"a person's approval before it takes live traffic; run `aipaas promote {model} "
            f"--version {found.version} --{mode} ... --approve-as YOUR_NAME`",
            gates=list(found.gates),
        )
    gates = with_approval(found.gates, found.requires_approval, approval)
    if not all(g.passed for g in gates):  # an approval that said no
        raise GateFailedError(
            f"{model} v{found.version} was not approved: {'; '.join(failure_reasons(gates))}\n"
            f"{format_gates(gates)}",
            gates=gates,
        )
    at = _now_iso()
    approver = approval.reviewer if approval and approval.approved else None
    att = attestation.sign(
        settings,
        model=model,
        version=found.version,
        action=ACTION,
        result=mode,
        decided_by=decider,
        at=at,
        gates=gates,
        approved_by=approver,
    )
    started = time.time()
    detail = {
        "mode": mode,
        "percent": percent,
        "champion": found.champion,
        "started_at": started,
        "until": started + watch_s,
        "limits": limits,
        "gates": [g.to_dict() for g in gates],
        "attestation": json.loads(att.to_tag()),
    }
    record = audit.append_event(
        settings, STARTED, detail, model=model, version=found.version, owner=decider, key_id=key_id
    )
    registry.connect(settings)
    registry.set_alias(model, tags.CANARY, found.version)
    signals.notify_champion_changed(settings, model)
    state = active(settings, model)
    assert state is not None and state.seq == record.seq
    return state


def end(
    settings: Settings,
    model: str,
    outcome: Outcome,
    *,
    decided_by: str | None = None,
    reasons: list[str] | None = None,
    evidence: dict[str, Any] | None = None,
    evidence_gates: list[GateResult] | None = None,
    key_id: str | None = None,
) -> CanaryEnd:
    """End the running release of ``model`` with ``outcome``; traffic returns to the champion.

    ``promoted`` records the promotion first (signed, on the chain, the
    ``champion`` alias moved), with the start's gates and ``evidence_gates``
    (the live limits, as the flow judged them); only a canary can end so.

    Raises:
        CanaryError: no release runs for the model, or ``promoted`` for a shadow.
    """
    if outcome not in OUTCOMES:
        raise CanaryError(f"unknown canary outcome {outcome!r}; one of {list(OUTCOMES)}")
    decider = decided_by or promote.default_decider()
    state = active(settings, model)
    if state is None:
        raise CanaryError(f"no canary or shadow of {model} is running")
    if outcome == "promoted" and state.mode != "canary":
        raise CanaryError("a shadow release decides nothing; it ends 'completed'")
    champion_after = state.champion
    if outcome == "promoted":
        decision = PromotionRecord(
            model=model,
            version=state.version,
            action="promote",
            result="promoted",
            decided_by=decider,
            gates=[*state.gates, *(evidence_gates or [])],
            approved_by=state.approved_by,
            key_id=key_id,
        )
        champion_after = promote.record_decision(settings, decision).version
    ended = CanaryEnd(
        model=model,
        version=state.version,
        mode=state.mode,
        outcome=outcome,
        decided_by=decider,
        at=_now_iso(),
        reasons=list(reasons or []),
        evidence=dict(evidence or {}),
        started_seq=state.seq,
        champion_after=champion_after,
    )
    detail = {k: v for k, v in ended.to_dict().items() if k not in ("model", "version")}
    detail["evidence_gates"] = [g.to_dict() for g in evidence_gates or []]
    audit.append_event(
        settings, ENDED, detail, model=model, version=state.version, owner=decider, key_id=key_id
    )
    registry.connect(settings)
    if registry.get_alias(model, tags.CANARY) is not None:
        registry.delete_alias(model, tags.CANARY)
    signals.notify_champion_changed(settings, model)
    return ended


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
