"""Probes and metrics: no key needed, not audited."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from serving.deps import ComponentsDep
from serving.metrics import CONTENT_TYPE
from serving.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process answers."""
    return Health(alive=True)


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(c: ComponentsDep) -> JSONResponse:
    """200 once the default model has a loaded version, 503 before.

    ``refused`` names each model whose ``champion`` points at a version
    serving refuses (never promoted), and why; ``failed`` each model whose
    champion failed to load or warm up (the others serve).
    """
    models = {n: (m.version if (m := c.holder.get(n)) else None) for n in c.holder.names}
    ready = models.get(c.settings.serving.default_model) is not None
    ready = ready and c.holder.follower_error is None
    failed = {n: e for n, e in c.holder.last_error.items() if models.get(n) is None}
    body = Readiness(
        ready=ready,
        models=models,
        error=c.holder.follower_error,
        refused=dict(c.holder.refused),
        failed={n: e for n, e in failed.items() if n not in c.holder.refused},
    ).model_dump()
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(c: ComponentsDep) -> Response:
    """Prometheus text format; every label is bounded (route template, served model, version)."""
    return Response(c.metrics.render(), media_type=CONTENT_TYPE)
