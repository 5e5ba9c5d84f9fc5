"""The append-only promotion log: every promotion decision and rollback, in order.

MLflow tags on a version say what was decided about that version; this log
says what happened to a model over time (who moved ``champion``, when, on which
evidence), and it survives a version being deleted from the registry. One JSON
object per line in ``<home>/promotions.jsonl``; lines are only ever appended,
under an exclusive lock, and fsynced before the call returns.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from aipaas.settings import Settings

Action = Literal["promote", "rollback"]
# "unchanged" is returned (promoting the champion again) but never logged.
Result = Literal["promoted", "rejected", "rolled-back", "unchanged"]


@dataclass(frozen=True)
class PromotionRecord:
    """One decision about one model version."""

    model: str
    version: str
    action: Action
    result: Result
    decided_by: str
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    gates: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    champion_before: str | None = None
    champion_after: str | None = None
    approved_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def log_path(settings: Settings) -> Path:
    return settings.home / "promotions.jsonl"


def append(settings: Settings, record: PromotionRecord) -> Path:
    """Append one record durably; concurrent writers never interleave lines."""
    path = log_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record.to_dict(), sort_keys=True, default=str) + "\n"
    with path.open("a", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return path


def read(settings: Settings, model: str | None = None) -> list[PromotionRecord]:
    """Every record, oldest first, optionally only one model's.

    A torn last line (a writer killed mid-write) is skipped rather than making
    the whole history unreadable.
    """
    path = log_path(settings)
    if not path.is_file():
        return []
    records: list[PromotionRecord] = []
    known = set(PromotionRecord.__dataclass_fields__)
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if model is not None and data.get("model") != model:
            continue
        records.append(PromotionRecord(**{k: v for k, v in data.items() if k in known}))
    return records


def last(settings: Settings, model: str) -> PromotionRecord | None:
    """The most recent record for ``model``, or None."""
    records = read(settings, model)
    return records[-1] if records else None
