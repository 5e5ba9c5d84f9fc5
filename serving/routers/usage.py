"""Reading the record (scope ``admin``): usage and cost, and the audit trail itself.

Every read is itself audited by the middleware like any request (the
reader's key, the route), and its filters go into the record's ``detail``,
an end user's as its pseudonym: the trail shows who read what, never a
raw end-user id.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from aipaas import audit
from aipaas.inference import usage as usage_mod
from aipaas.settings import Settings
from serving.deps import ComponentsDep, ContextDep, Guard
from serving.middleware import RequestContext

router = APIRouter(tags=["usage"], dependencies=[Depends(Guard("admin", limited=False))])

MAX_RECORDS = 1000


class UsageRowOut(BaseModel):
    """One group: a key and model version (and end user, and hour or day, when asked)."""

    bucket: str | None = None  # ISO UTC start of the hour or day (time series only)
    key_id: str | None
    owner: str | None
    model: str | None
    version: str | None
    end_user: str | None = None  # pseudonym (grouped by end user only)
    requests: int
    errors: int
    compute_s: float
    cost: float


class AuditRecordOut(BaseModel):
    """One record of the trail, as stored (``end_user`` is the pseudonym)."""

    seq: int
    ts: str
    kind: str
    request_id: str | None
    key_id: str | None
    owner: str | None
    route: str | None
    model: str | None
    version: str | None
    input_hmac: str | None
    status: int | None
    latency_ms: float | None
    compute_s: float | None
    cost: float | None
    event: str | None
    detail: str | None
    end_user: str | None
    prev_hash: str
    hash: str


def _note_read(ctx: RequestContext, settings: Settings, filters: dict[str, Any]) -> None:
    """Put what was read into the request's audit record, the end user as its pseudonym."""
    raw = filters.pop("end_user", None)
    if raw is not None:
        filters["end_user"] = audit.end_user_pseudonym(settings, raw)
    read = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in filters.items()}
    ctx.detail = {**(ctx.detail or {}), "read": {k: v for k, v in read.items() if v is not None}}


@router.get("/usage", response_model=list[UsageRowOut])
async def get_usage(
    c: ComponentsDep,
    ctx: ContextDep,
    key_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    bucket: Annotated[
        Literal["hour", "day"] | None, Query(description="A time series: per UTC hour or day.")
    ] = None,
    end_user: Annotated[str | None, Query(description="Only this end user (raw id).")] = None,
    by_end_user: bool = False,
) -> list[UsageRowOut]:
    """Requests, errors, compute seconds and cost per key and model version.

    ``bucket=hour|day`` gives one row per UTC hour or day (``bucket`` is its
    start); ``by_end_user=true`` one per end user (pseudonym) too.
    """
    _note_read(
        ctx,
        c.settings,
        {"key_id": key_id, "since": since, "until": until, "bucket": bucket, "end_user": end_user},
    )
    rows = await anyio.to_thread.run_sync(
        lambda: usage_mod.usage(
            c.settings,
            key_id=key_id,
            since=since,
            until=until,
            end_user=end_user,
            by_end_user=by_end_user,
            bucket=bucket,
        )
    )
    return [UsageRowOut(**asdict(r)) for r in rows]


@router.get("/audit", response_model=list[AuditRecordOut])
async def get_audit(
    c: ComponentsDep,
    ctx: ContextDep,
    key_id: str | None = None,
    end_user: Annotated[
        str | None, Query(description="Only this end user's requests (raw id; hashed here).")
    ] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_RECORDS)] = 100,
) -> list[AuditRecordOut]:
    """Audit records by key, end user and UTC time range [since, until), oldest first."""
    _note_read(
        ctx,
        c.settings,
        {"key_id": key_id, "since": since, "until": until, "limit": limit, "end_user": end_user},
    )
    rows = await anyio.to_thread.run_sync(
        lambda: audit.query(
            c.settings,
            key_id=key_id,
            end_user=end_user,
            since=since,
            until=until,
            limit=limit,
            newest_first=False,
        )
    )
    return [AuditRecordOut(**r) for r in rows]
