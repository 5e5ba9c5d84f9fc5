"""Retraining: guardrails, the hand-off of labelled feedback, and the record of every decision.

Drift can fire every few minutes; retraining costs a Ray search, and an
unstable input could make the platform retrain in a loop. So before the
retrain flow runs anything it asks :func:`guardrail_verdict`: a cooldown
since the last retrain of the model, a maximum number per rolling 24 hours,
and a suggest-only mode that reports the decision instead of acting
(``settings.retrain``). Every decision, allowed or not, ends as one
:class:`RetrainOutcome` appended with its reasons to
``<home>/retrain/history.jsonl``: a refusal by :func:`record_refusal`, a
retrain by :func:`attempt`, which records it however the pipeline ends.

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

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from aipaas import files
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
    return _dir(settings) / "state.json"


def _load(settings: Settings) -> dict[str, Any]:
    state: dict[str, Any] = files.read_json(state_path(settings), default={})
    return state


def _save(settings: Settings, state: dict[str, Any]) -> None:
    files.atomic_write_json(state_path(settings), state, indent=1)


def started_at(settings: Settings, model: str) -> list[float]:
    """When retrains of ``model`` started (epoch seconds), oldest first."""
    return [float(t) for t in _load(settings).get(model, {}).get("started", [])]


def record_start(settings: Settings, model: str, now: float | None = None) -> None:
    """Count a retrain against the guardrails (before it runs: a failed one counts too)."""
    now = time.time() if now is None else now
    state = _load(settings)
    entry = state.setdefault(model, {})
    entry["started"] = [t for t in entry.get("started", []) if now - t < 7 * DAY_S] + [now]
    _save(settings, state)


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
    """The guardrails applied to ``model``'s recorded retrains, at ``now``."""
    return guardrails(settings.retrain, started_at(settings, model), now)


# -- the history -----------------------------------------------------------------


def history_path(settings: Settings) -> Path:
    return _dir(settings) / "history.jsonl"


def record_outcome(settings: Settings, outcome: RetrainOutcome) -> RetrainOutcome:
    """Append one decision (and how it ended) to the history; returns it."""
    files.append_jsonl(history_path(settings), outcome.to_dict())
    return outcome


def retrain_history(settings: Settings, model: str | None = None) -> list[RetrainOutcome]:
    """Every recorded retrain decision, oldest first, optionally only ``model``'s."""
    return [
        RetrainOutcome.from_dict(d)
        for d in files.read_jsonl(history_path(settings))
        if model is None or d.get("model") == model
    ]


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
    and the exception is swallowed. Any other platform error is recorded as
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
    except AipaasError as err:
        record_outcome(settings, replace(run.outcome, outcome="failed", error=str(err)))
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
    :func:`aipaas.inference.feedback.labelled_rows`.
    """
    if labelled_rows is None:
        from aipaas.inference import feedback

        labelled_rows = feedback.labelled_rows
    state = _load(settings)
    entry = state.setdefault(definition.name, {})
    since_iso = entry.get("exported_through")
    since = datetime.fromisoformat(since_iso) if since_iso else None
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
        entry["exported_through"] = latest.isoformat()
    _save(settings, state)
    return FeedbackExport(path, len(rows))
