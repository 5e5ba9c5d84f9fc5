"""Probes and metrics: no key needed, not audited."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from aipaas import db
from aipaas.audit import AuditWriter
from serving.deps import Components, ComponentsDep
from serving.errors import log_unavailable
from serving.metrics import CONTENT_TYPE
from serving.schemas import Health, Readiness

router = APIRouter(tags=["health"])
# A probe answers quickly: a database that takes longer counts as unreachable.
PING_WAIT_S = 2.0
DB_UNREACHABLE = (
    "the platform database is unreachable: requests are refused with 503 "
    "(no answer goes out without its audit record) until it is back"
)


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process answers."""
    return Health(alive=True)


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(c: ComponentsDep, request: Request) -> JSONResponse:
    """200 once the default model has a loaded version and the platform database answers.

    ``refused`` names each model whose ``champion`` points at a version
    serving refuses (never promoted), and why; ``failed`` each model whose
    champion failed to load or warm up (the others serve). While the
    platform database is unreachable, or the audit writer has been stuck on
    one commit longer than a request waits for it (a database that stopped
    answering, a SQLite file another process keeps locked), ``error`` says so
    and the probe is 503: every audited request would be. It turns 200 again
    by itself.

    ``canary`` names each model with a canary or shadow release on record:
    its challenger's version, mode, share and window end, and ``serving``
    false with an ``error`` when its challenger takes no traffic here (it
    failed to load, its window is long past, its record cannot be trusted).
    The champion answers then: readiness does not depend on it.
    """
    models = {n: (m.version if (m := c.holder.get(n)) else None) for n in c.holder.names}
    database = await _database_problem(c, getattr(request.app.state, "writer", None))
    ready = models.get(c.settings.serving.default_model) is not None
    ready = ready and c.holder.follower_error is None and database is None
    failed = {n: e for n, e in c.holder.last_error.items() if models.get(n) is None}
    problems = [p for p in (database, c.holder.follower_error) if p]
    body = Readiness(
        ready=ready,
        models=models,
        error="; ".join(problems) or None,
        refused=dict(c.holder.refused),
        failed={n: e for n, e in failed.items() if n not in c.holder.refused},
        canary={n: status.to_dict() for n, status in c.holder.canaries().items()},
    ).model_dump()
    return JSONResponse(body, status_code=200 if ready else 503)


async def _database_problem(c: Components, writer: AuditWriter | None) -> str | None:
    """Why the platform database cannot serve requests now, or None (not needed, or it answers).

    Names no host: the probe needs no key. The log has the driver's words.
    """
    serving = c.settings.serving
    if not (serving.audit_enabled or serving.auth_enabled):
        return None
    stalled = writer.stalled() if writer is not None and serving.audit_enabled else None
    if stalled is not None:
        return (
            f"the platform database has not taken the audit trail's last commit for "
            f"{stalled:.0f} s: requests are refused with 503 (no answer goes out without "
            "its audit record) until it does"
        )
    try:
        with anyio.fail_after(PING_WAIT_S):
            await anyio.to_thread.run_sync(db.ping, c.settings, abandon_on_cancel=True)
    except db.DatabaseUnavailableError as err:
        log_unavailable(err)
        return DB_UNREACHABLE
    except TimeoutError:
        return f"{DB_UNREACHABLE} (no answer within {PING_WAIT_S:g} s)"
    return None


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(c: ComponentsDep) -> Response:
    """Prometheus text format; every label is bounded (route template, served model, version)."""
    return Response(c.metrics.render(), media_type=CONTENT_TYPE)
