"""Admin routes (scope ``admin``): a forced reload, and a rollback on record.

A rollback through the API is the same decision as ``aipaas rollback``
(:func:`aipaas.training.promote.rollback`): signed, tagged and appended to the
audit chain, here with the admin key as who acted (``key <id> (<name>)``,
and the event's ``key_id``). This process reloads at once; other serving
processes on the same home follow the promotion signal.
"""

from __future__ import annotations

import functools

import anyio
from fastapi import APIRouter, Depends

from aipaas.training import promote
from serving.deps import ApiKeyDep, ComponentsDep, ContextDep, Guard
from serving.holder import sync_pins
from serving.schemas import ReloadOut, RollbackOut

router = APIRouter(tags=["admin"], dependencies=[Depends(Guard("admin", limited=False))])


@router.post("/admin/reload", response_model=ReloadOut)
async def reload(c: ComponentsDep) -> ReloadOut:
    """Discover new models (no allow-list), check every champion and the keys' pins, now."""
    outcomes = {}
    await anyio.to_thread.run_sync(c.holder.discover)
    for name in list(c.holder.names):
        outcomes[name] = await anyio.to_thread.run_sync(c.holder.refresh, name)
    await anyio.to_thread.run_sync(sync_pins, c.holder, c.settings)
    return ReloadOut(outcomes=outcomes)


@router.post("/admin/models/{name}/rollback", response_model=RollbackOut)
async def rollback(name: str, c: ComponentsDep, key: ApiKeyDep, ctx: ContextDep) -> RollbackOut:
    """Move ``champion`` back to ``previous-champion``: signed, audited, served at once.

    404 when there is no previous champion to go back to, or it was never promoted.
    """
    ctx.model = name
    decide = functools.partial(
        promote.rollback, c.settings, name, decided_by=f"key {key.id} ({key.name})", key_id=key.id
    )
    record = await anyio.to_thread.run_sync(decide)
    ctx.version = record.version
    serving = "not served here"
    if name in c.holder.names:
        serving = await anyio.to_thread.run_sync(c.holder.refresh, name)
    return RollbackOut(
        model=name,
        version=record.version,
        previous=record.champion_before,
        decided_by=record.decided_by,
        at=record.at,
        signature=record.signature,
        serving=serving,
    )
