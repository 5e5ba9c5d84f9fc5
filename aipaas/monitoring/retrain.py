"""Retraining guardrails and the hand-off of labelled feedback to the data flow.

Drift can fire every few minutes; retraining costs a Ray search, and an
unstable input could make the platform retrain in a loop. So before the
retrain flow runs anything it asks :func:`guardrails`: a cooldown since the
last retrain of the model, a maximum number per rolling 24 hours, and a
suggest-only mode that reports the decision instead of acting
(``settings.retrain``). Every decision, allowed or not, is appended with its
reasons to ``<home>/retrain/history.jsonl``.

New training rows are the labelled feedback: :func:`export_feedback` writes
the rows labelled since the last export to
``data/incoming/<dataset>/feedback-<timestamp>.csv``, where the data flow's
ingest stage picks them up, validates them with the suite and versions them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from aipaas.modeldef import ModelDefinition
from aipaas.settings import RetrainSettings, Settings

DAY_S = 24 * 3600.0


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


def _dir(settings: Settings) -> Path:
    return settings.home / "retrain"


def _state_path(settings: Settings) -> Path:
    return _dir(settings) / "state.json"


def _load(settings: Settings) -> dict[str, Any]:
    path = _state_path(settings)
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(settings: Settings, state: dict[str, Any]) -> None:
    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def started_at(settings: Settings, model: str) -> list[float]:
    """When retrains of ``model`` started (epoch seconds), oldest first."""
    return [float(t) for t in _load(settings).get(model, {}).get("started", [])]


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


def check(settings: Settings, model: str, now: float | None = None) -> GuardrailVerdict:
    return guardrails(settings.retrain, started_at(settings, model), now)


def record_start(settings: Settings, model: str, now: float | None = None) -> None:
    """Count a retrain against the guardrails (before it runs: a failed one counts too)."""
    now = time.time() if now is None else now
    state = _load(settings)
    entry = state.setdefault(model, {})
    entry["started"] = [t for t in entry.get("started", []) if now - t < 7 * DAY_S] + [now]
    _save(settings, state)


def record_decision(settings: Settings, model: str, decision: dict[str, Any]) -> Path:
    """Append one retrain decision (and its outcome) to the model-independent history."""
    path = _dir(settings) / "history.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"at": time.time(), "model": model, **decision}
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")
    return path


def history(settings: Settings, model: str | None = None) -> list[dict[str, Any]]:
    path = _dir(settings) / "history.jsonl"
    if not path.is_file():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if model is None or e.get("model") == model]


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
) -> tuple[Path | None, int]:
    """Write feedback labelled since the last export to ``data/incoming/<dataset>/``.

    Returns the file written (None when there was nothing new) and its row
    count. Rows without logged inputs (``log_inputs`` off) cannot become
    training data and are left out. ``labelled_rows`` defaults to
    :func:`aipaas.inference.feedback.labelled_rows`.
    """
    if labelled_rows is None:
        from aipaas.inference.feedback import labelled_rows as _labelled_rows

        labelled_rows = _labelled_rows
    state = _load(settings)
    entry = state.setdefault(definition.name, {})
    since_iso = entry.get("exported_through")
    since = datetime.fromisoformat(since_iso) if since_iso else None
    frame = labelled_rows(settings, definition.name, since=since)
    if since is not None and not frame.empty and "labelled_at" in frame:
        frame = frame[pd.to_datetime(frame["labelled_at"], utc=True) > pd.Timestamp(since)]
    rows = training_rows(frame, definition)
    if rows.empty:
        return None, 0
    now = time.time() if now is None else now
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = settings.data.dir / "incoming" / definition.dataset / f"feedback-{stamp}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    rows.to_csv(tmp, index=False)
    tmp.replace(path)
    if "labelled_at" in frame and not frame.empty:
        latest = pd.to_datetime(frame["labelled_at"], utc=True).max()
        entry["exported_through"] = latest.isoformat()
    _save(settings, state)
    return path, len(rows)
