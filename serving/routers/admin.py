"""Admin routes (scope ``admin``): usage and cost, a forced reload."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

import anyio
from fastapi import APIRouter, Depends

from aipaas.inference import usage as usage_mod
from serving.deps import ComponentsDep, Guard
from serving.schemas import ReloadOut, UsageOut

router = APIRouter(tags=["admin"], dependencies=[Depends(Guard("admin", limited=False))])


@router.get("/usage", response_model=list[UsageOut])
async def get_usage(
    c: ComponentsDep,
    key_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[UsageOut]:
    """Requests, errors, compute seconds and cost per key and model version."""
    rows = await anyio.to_thread.run_sync(
        lambda: usage_mod.usage(c.settings, key_id=key_id, since=since, until=until)
    )
    return [UsageOut(**asdict(r)) for r in rows]


@router.post("/admin/reload", response_model=ReloadOut)
async def reload(c: ComponentsDep) -> ReloadOut:
    """Check every served model's champion now instead of at the next poll."""
    outcomes = {}
    for name in c.holder.names:
        outcomes[name] = await anyio.to_thread.run_sync(c.holder.refresh, name)
    return ReloadOut(outcomes=outcomes)
