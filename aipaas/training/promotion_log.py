"""The append-only promotion log: every promotion decision and rollback, in order.

MLflow tags on a version say what was decided about that version; this log
says what happened to a model over time (who moved ``champion``, when, on which
evidence), and it survives a version being deleted from the registry. One JSON
object per line in ``<home>/promotions.jsonl`` (:func:`aipaas.files.append_jsonl`:
one ``write`` per record, so concurrent writers never interleave), fsynced
before the call returns; a torn last line is skipped when read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from aipaas.files import append_jsonl, iter_jsonl
from aipaas.schemas import GateResult
from aipaas.settings import Settings

Action = Literal["promote", "rollback"]
# "unchanged" is returned (promoting the champion again) but never logged.
Result = Literal["promoted", "rejected", "rolled-back", "unchanged"]


@dataclass(frozen=True)
class PromotionRecord:
    """One decision about one model version: what the promote flow returns."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromotionRecord:
        """The record from its JSON form; unknown keys (a newer writer's) are ignored."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["gates"] = [GateResult(**g) for g in known.get("gates") or []]
        return cls(**known)


def log_path(settings: Settings) -> Path:
    return settings.home / "promotions.jsonl"


def append(settings: Settings, record: PromotionRecord) -> Path:
    """Append one record durably: on disk when this returns."""
    return append_jsonl(log_path(settings), record.to_dict(), fsync=True)


def read(settings: Settings, model: str | None = None) -> list[PromotionRecord]:
    """Every record, oldest first, optionally only one model's."""
    return [
        PromotionRecord.from_dict(data)
        for data in iter_jsonl(log_path(settings))
        if model is None or data.get("model") == model
    ]


def last(settings: Settings, model: str) -> PromotionRecord | None:
    """The most recent record for ``model``, or None."""
    records = read(settings, model)
    return records[-1] if records else None
