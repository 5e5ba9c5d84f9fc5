"""Reading the record (scope ``admin``): usage and cost. Every read is itself audited."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

import anyio
from fastapi import APIRouter, Depends

from aipaas.inference import usage as usage_mod
from serving.deps import ComponentsDep, Guard
from serving.schemas import UsageOut

router = APIRouter(tags=["usage"], dependencies=[Depends(Guard("admin", limited=False))])


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
