"""Retraining: guardrails, the hand-off of labelled feedback, and the record of every decision.

Drift can fire every few minutes; retraining costs a Ray search, and an
unstable input could make the platform retrain in a loop. So before the
retrain flow runs anything it asks the guardrails (:func:`claim`, which also
counts the start it allows): a cooldown since the last retrain of the model,
a maximum number per rolling 24 hours, and a suggest-only mode that reports
the decision instead of acting (``settings.retrain``). Every decision, allowed or not, ends as one
:class:`RetrainOutcome` recorded with its reasons: a refusal by
:func:`record_refusal`, a retrain by :func:`attempt`, which records it
however the pipeline ends.

All of it lives in the platform database (``retrain_starts``,
``retrain_history``, ``retrain_exports``), so every host sharing it sees the
same starts, history and export mark. :func:`claim` checks the guardrails
and counts the start in one transaction under the model's retrain lock
(:func:`aipaas.coordination.lock`): two drift runs, on one host or two, can
never both pass the cooldown. The ``state.json`` and ``history.jsonl`` an
older aipaas kept under ``<home>/retrain/`` are imported once, on first use.

New training rows are the labelled feedback: :func:`export_feedback` writes
the rows labelled since the last export to
``data/incoming/<dataset>/feedback-<timestamp>.csv``, where the data flow's
ingest stage picks them up, validates them with the suite and versions them.
That file is untracked by git, so it is not where the rows are kept: the
data flow that follows pushes it to the DVC remote with the version it built
(:func:`aipaas.datasets.ingest.push_dataset`), and a later ingest puts it
back, or refuses, if it is deleted (:func:`aipaas.datasets.ingest.restore_incoming`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from aipaas import coordination, db, files
from aipaas.exceptions import AipaasError, GateFailedError
from aipaas.modeldef import ModelDefinition
from aipaas.settings import RetrainSettings, Settings

DAY_S = 24 * 3600.0

Action = Literal["skipped", "suggested", "retrained"]


@dataclass(frozen=True)
class GuardrailVerdict:
    """Whether a retrain may start now, and why (not)."""

    allowed: bool
    suggest_only: bool
    reasons: tuple[str, ...]
    retrains_last_24h: int
    next_allowed_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FeedbackExport:
    """The feedback file one retrain added to the dataset's incoming rows."""

    path: Path | None  # None: nothing labelled since the last export
    rows: int = 0


@dataclass(frozen=True)
class RetrainOutcome:
    """One retrain decision and how it ended: what the retrain flow returns and the history holds.

    ``action`` is ``skipped`` (a guardrail refused), ``suggested``
    (suggest-only mode) or ``retrained``; a retrain's ``outcome`` is the
    promotion's result (``promoted``, ``rejected``, ``unchanged``) or
    ``failed``.
    """

    model: str
    reason: str
    action: Action
    guardrails: tuple[str, ...]
    at: float = field(default_factory=time.time)
    outcome: str | None = None
    feedback_file: str | None = None
    feedback_rows: int = 0
    data_hash: str | None = None
    version: str | None = None  # the version trained
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrainOutcome:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["guardrails"] = tuple(values.get("guardrails") or ())
        return cls(**values)


# -- state: when retrains started, what feedback was exported ----------------------


def _dir(settings: Settings) -> Path:
    return settings.home / "retrain"


def state_path(settings: Settings) -> Path:
    """Where an older aipaas kept start times and export marks: imported once, then renamed."""
    return _dir(settings) / "state.json"


def retrain_lock(model: str) -> str:
    """The lock under which a retrain of ``model`` is checked and counted, on every host."""
    return f"retrain:{model}"


def _import_legacy(settings: Settings) -> None:
    """Bring the ``state.json`` and ``history.jsonl`` of an older aipaas into the database, once."""

    def state(conn: Connection, content: bytes) -> int:
        try:
            found = json.loads(content)
        except ValueError:
            return 0
        rows = 0
        for model, entry in found.items() if isinstance(found, dict) else ():
            if not isinstance(entry, dict):
                continue
            starts = [{"model": model, "started_at": float(t)} for t in entry.get("started", [])]
            if starts:
                conn.execute(insert(db.retrain_starts), starts)
                rows += len(starts)
            if entry.get("exported_through"):
                _mark_exported(conn, model, str(entry["exported_through"]))
                rows += 1
        return rows

    def history(conn: Connection, content: bytes) -> int:
        outcomes = [
            RetrainOutcome.from_dict(d)
            for d in coordination.jsonl_records(content)
            if {"model", "reason", "action"} <= d.keys()
        ]
        if outcomes:
            conn.execute(insert(db.retrain_history), [_history_row(o) for o in outcomes])
        return len(outcomes)

    coordination.import_once(settings, state_path(settings), state)
    coordination.import_once(settings, history_path(settings), history)


def _starts(conn: Connection, model: str) -> list[float]:
    t = db.retrain_starts
    query = select(t.c.started_at).where(t.c.model == model).order_by(t.c.started_at)
    return [float(at) for (at,) in conn.execute(query)]


def _add_start(conn: Connection, model: str, now: float) -> None:
    """Count a start at ``now``; starts a week old are forgotten (no guardrail looks that far)."""
    t = db.retrain_starts
    conn.execute(delete(t).where(t.c.model == model, t.c.started_at <= now - 7 * DAY_S))
    conn.execute(insert(t).values(model=model, started_at=now))


def started_at(settings: Settings, model: str) -> list[float]:
    """When retrains of ``model`` started (epoch seconds), oldest first, on any host."""
    _import_legacy(settings)
    with db.engine(settings).connect() as conn:
        return _starts(conn, model)


def record_start(settings: Settings, model: str, now: float | None = None) -> None:
    """Count a retrain against the guardrails (before it runs: a failed one counts too).

    :func:`claim` checks and counts in one step; this counts unconditionally.
    """
    now = time.time() if now is None else now
    _import_legacy(settings)
    with coordination.lock(settings, retrain_lock(model)), db.engine(settings).begin() as conn:
        _add_start(conn, model, now)


def claim(settings: Settings, model: str, now: float | None = None) -> GuardrailVerdict:
    """Apply the guardrails to ``model`` and, when they allow a retrain, count it: one step.

    Under the model's retrain lock and in one transaction, so of two drift
    runs that ask at once (on one host or on two sharing the database) one
    is allowed and the other sees its start and meets the cooldown.
    """
    now = time.time() if now is None else now
    _import_legacy(settings)
    with coordination.lock(settings, retrain_lock(model)), db.engine(settings).begin() as conn:
        verdict = guardrails(settings.retrain, _starts(conn, model), now)
        if verdict.allowed:
            _add_start(conn, model, now)
    return verdict


def exported_through(settings: Settings, model: str) -> datetime | None:
    """The label time up to which feedback of ``model`` was exported (None: never)."""
    _import_legacy(settings)
    t = db.retrain_exports
    with db.engine(settings).connect() as conn:
        found = conn.execute(select(t.c.exported_through).where(t.c.model == model)).scalar()
    return None if found is None else _utc(found)


def _utc(iso: str) -> datetime:
    """An ISO 8601 time as an aware UTC datetime (one written without a zone is UTC)."""
    when = datetime.fromisoformat(iso)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _mark_exported(conn: Connection, model: str, through: str) -> None:
    """Move the export mark of ``model`` to ``through`` (ISO 8601), never back."""
    t = db.retrain_exports
    known = conn.execute(select(t.c.exported_through).where(t.c.model == model)).scalar()
    values = {"exported_through": through, "updated_at": time.time()}
    if known is None:
        conn.execute(insert(t).values(model=model, **values))
    elif _utc(through) > _utc(known):
        conn.execute(update(t).where(t.c.model == model).values(**values))


# -- the guardrails --------------------------------------------------------------


def guardrails(
    policy: RetrainSettings, started: list[float], now: float | None = None
) -> GuardrailVerdict:
    """Apply cooldown, daily cap and suggest-only to the retrain history of one model."""
    now = time.time() if now is None else now
    recent = [t for t in started if now - t < DAY_S]
    reasons: list[str] = []
    next_at: list[float] = []
    cooldown_s = policy.cooldown_minutes * 60.0
    if started and now - max(started) < cooldown_s:
        wait = cooldown_s - (now - max(started))
        reasons.append(
            f"cooldown: the last retrain started {(now - max(started)) / 60:.1f} min ago "
            f"(cooldown {policy.cooldown_minutes:g} min; {wait / 60:.1f} min to go)"
        )
        next_at.append(max(started) + cooldown_s)
    if len(recent) >= policy.max_per_day:
        reasons.append(
            f"daily cap: {len(recent)} retrains in the last 24 h (max_per_day {policy.max_per_day})"
        )
        next_at.append(min(recent) + DAY_S)
    blocked = bool(reasons)
    if policy.suggest_only:
        reasons.append("suggest-only mode: reporting the decision instead of retraining")
    if not blocked and not policy.suggest_only:
        reasons.append(f"allowed: {len(recent)} retrains in the last 24 h")
    return GuardrailVerdict(
        allowed=not blocked and not policy.suggest_only,
        suggest_only=policy.suggest_only,
        reasons=tuple(reasons),
        retrains_last_24h=len(recent),
        next_allowed_at=max(next_at) if next_at else None,
    )


def guardrail_verdict(settings: Settings, model: str, now: float | None = None) -> GuardrailVerdict:
    """The guardrails applied to ``model``'s recorded retrains, at ``now`` (counts nothing).

    To start a retrain, :func:`claim`: between this answer and a separate
    :func:`record_start` another host could start one too.
    """
    return guardrails(settings.retrain, started_at(settings, model), now)


# -- the history -----------------------------------------------------------------


def history_path(settings: Settings) -> Path:
    """Where an older aipaas kept the history: imported once, then renamed."""
    return _dir(settings) / "history.jsonl"


def _history_row(outcome: RetrainOutcome) -> dict[str, Any]:
    return {
        "model": outcome.model,
        "at": float(outcome.at),
        "action": outcome.action,
        "record": json.dumps(outcome.to_dict(), default=str, separators=(",", ":")),
    }


def record_outcome(settings: Settings, outcome: RetrainOutcome) -> RetrainOutcome:
    """Add one decision (and how it ended) to the history; returns it."""
    _import_legacy(settings)  # older decisions first, when there are any
    with db.engine(settings).begin() as conn:
        conn.execute(insert(db.retrain_history).values(**_history_row(outcome)))
    return outcome


def retrain_history(settings: Settings, model: str | None = None) -> list[RetrainOutcome]:
    """Every recorded retrain decision on any host, oldest first, optionally only ``model``'s."""
    _import_legacy(settings)
    t = db.retrain_history
    query = select(t.c.record).order_by(t.c.at, t.c.id)
    if model is not None:
        query = query.where(t.c.model == model)
    with db.engine(settings).connect() as conn:
        return [RetrainOutcome.from_dict(json.loads(r)) for (r,) in conn.execute(query)]


def record_refusal(
    settings: Settings, model: str, reason: str, verdict: GuardrailVerdict
) -> RetrainOutcome:
    """Record that the guardrails (or suggest-only mode) kept a retrain from starting."""
    action: Action = "suggested" if verdict.suggest_only else "skipped"
    return record_outcome(
        settings, RetrainOutcome(model, reason, action, guardrails=verdict.reasons)
    )


class RetrainAttempt:
    """The data -> train -> promote part of one allowed retrain, as it progresses."""

    def __init__(self, outcome: RetrainOutcome) -> None:
        self.outcome = outcome

    def trained(self, version: str, data_hash: str) -> None:
        """A challenger was registered: ``version``, trained on data ``data_hash``."""
        self.outcome = replace(self.outcome, version=str(version), data_hash=data_hash)

    def decided(self, result: str) -> None:
        """The promotion decided ``result`` (promoted, rejected, unchanged)."""
        self.outcome = replace(self.outcome, outcome=result)


@contextmanager
def attempt(
    settings: Settings,
    model: str,
    reason: str,
    verdict: GuardrailVerdict,
    exported: FeedbackExport,
) -> Iterator[RetrainAttempt]:
    """Run the pipeline of one retrain inside; its outcome is recorded however it ends.

    A failed gate is an answer, not an error: the attempt ends ``rejected``
    and the exception is swallowed. Any other exception is recorded as
    ``failed`` and raised again, so the run fails where people look.
    """
    run = RetrainAttempt(
        RetrainOutcome(
            model,
            reason,
            "retrained",
            guardrails=verdict.reasons,
            feedback_file=None if exported.path is None else str(exported.path),
            feedback_rows=exported.rows,
        )
    )
    try:
        yield run
    except GateFailedError as err:
        run.outcome = replace(run.outcome, outcome="rejected", error=str(err))
    except Exception as err:  # noqa: BLE001 - recorded, then raised again
        # Platform errors and the rest alike (a Ray node that did not start, an
        # MLflow outage): the history says the retrain failed and why.
        error = str(err) if isinstance(err, AipaasError) else f"{type(err).__name__}: {err}"
        record_outcome(settings, replace(run.outcome, outcome="failed", error=error))
        raise
    record_outcome(settings, run.outcome)


# -- new training rows from feedback ------------------------------------------------


def training_rows(feedback: pd.DataFrame, definition: ModelDefinition) -> pd.DataFrame:
    """The feedback rows usable for training: every feature present, and the label."""
    columns = [*definition.features, definition.target]
    if feedback.empty or any(c not in feedback for c in columns):
        return pd.DataFrame(columns=columns)
    return feedback[columns].dropna().reset_index(drop=True)


def export_feedback(
    settings: Settings,
    definition: ModelDefinition,
    *,
    labelled_rows: Callable[..., pd.DataFrame] | None = None,
    now: float | None = None,
) -> FeedbackExport:
    """Write feedback labelled since the last export to ``data/incoming/<dataset>/``.

    Rows without logged inputs (``log_inputs`` off) cannot become training
    data and are left out. ``labelled_rows`` defaults to
    :func:`aipaas.inference.feedback.labelled_rows`. The export mark is in
    the platform database and exports of a model take turns under a lock, so
    no labelled row is exported twice, from this host or another.
    """
    if labelled_rows is None:
        from aipaas.inference import feedback

        labelled_rows = feedback.labelled_rows
    with coordination.lock(settings, f"feedback-export:{definition.name}"):
        since = exported_through(settings, definition.name)
        frame = labelled_rows(settings, definition.name, since=since, target=definition.target)
        if since is not None and not frame.empty and "labelled_at" in frame:
            frame = frame[pd.to_datetime(frame["labelled_at"], utc=True) > pd.Timestamp(since)]
        rows = training_rows(frame, definition)
        if rows.empty:
            return FeedbackExport(None, 0)
        now = time.time() if now is None else now
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = settings.data.dir / "incoming" / definition.dataset / f"feedback-{stamp}.csv"
        files.atomic_write(path, rows.to_csv(index=False))
        if "labelled_at" in frame and not frame.empty:
            latest = pd.to_datetime(frame["labelled_at"], utc=True).max()
            with db.engine(settings).begin() as conn:
                _mark_exported(conn, definition.name, latest.isoformat())
        return FeedbackExport(path, len(rows))
