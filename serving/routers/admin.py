"""Admin routes (scope ``admin``): a forced reload."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends

from serving.deps import ComponentsDep, Guard
from serving.schemas import ReloadOut

router = APIRouter(tags=["admin"], dependencies=[Depends(Guard("admin", limited=False))])


@router.post("/admin/reload", response_model=ReloadOut)
async def reload(c: ComponentsDep) -> ReloadOut:
    """Check every served model's champion now instead of at the next poll."""
    outcomes = {}
    for name in c.holder.names:
        outcomes[name] = await anyio.to_thread.run_sync(c.holder.refresh, name)
    return ReloadOut(outcomes=outcomes)
