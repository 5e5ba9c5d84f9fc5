"""The serving app factory: ``uvicorn serving.app:create_app --factory``.

The lifespan opens the platform database and the audit writer, loads each
served model's champion (``/readyz`` is 503 until the default one is in),
and starts the task that follows ``champion``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from fastapi import FastAPI

from aipaas.audit import AuditRecord, AuditWriter
from aipaas.inference.keys import KeyStore, RateLimiter
from aipaas.inference.quotas import Quotas
from aipaas.monitoring.spool import SpoolWriter
from aipaas.settings import Settings, get_settings
from serving import errors
from serving.deps import Components
from serving.holder import (
    AuditEvent,
    ModelHolder,
    ModelSource,
    RegistrySource,
    follow_champions,
)
from serving.metrics import Metrics
from serving.middleware import AuditMiddleware
from serving.routers import admin, feedback, health, predict, usage
from serving.sink import NoopSink, RowSink

log = logging.getLogger(__name__)


def _follower_died(holder: ModelHolder) -> Any:
    """A crashed follower must not fail silently: /readyz turns 503 with the reason."""

    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        err = task.exception()
        if err is not None:
            log.error("the champion follower stopped: %r", err, exc_info=err)
            holder.follower_error = f"champion follower stopped: {type(err).__name__}: {err}"

    return done


def _openapi_with_signatures(app: FastAPI, holder: ModelHolder) -> Any:
    """OpenAPI whose predict bodies are the loaded versions' signature schemas.

    The routes exist before any model is loaded and a swap may change the
    signature, so the schema is rebuilt on each request for it (docs only).
    """
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        spec = get_openapi(title=app.title, version=app.version, routes=app.routes)
        default = holder.get(holder.names[0]) if holder.names else None
        for path, op in spec.get("paths", {}).items():
            if not path.endswith("/predict") or "post" not in op:
                continue
            served = default
            if path.startswith("/models/"):
                # one schema per served model under the same path: list them
                schemas = [
                    m.record_model.model_json_schema(by_alias=True) for m in holder.all().values()
                ]
                record: dict[str, Any] = {"oneOf": schemas} if schemas else {"type": "object"}
            elif served is not None:
                record = served.record_model.model_json_schema(by_alias=True)
            else:
                record = {"type": "object"}
            op["post"]["requestBody"]["content"]["application/json"]["schema"] = {
                "oneOf": [record, {"type": "array", "items": record}]
            }
        return spec

    return openapi


def create_app(
    settings: Settings | None = None,
    *,
    row_sink: RowSink | None = None,
    model_source: ModelSource | None = None,
    follow: bool = True,
    key_cache_s: float = 2.0,
) -> FastAPI:
    """Build the app: the one composition root of serving.

    Args:
        settings: defaults to :func:`aipaas.settings.get_settings`.
        row_sink: where answered rows go for profiling (default: the spool
            that ``aipaas profiler`` reads, when ``serving.profiling_enabled``).
        model_source: where versions come from (default: the MLflow registry).
        follow: run the background task that follows ``champion``.
        key_cache_s: how long a key lookup is trusted; a revocation takes
            effect within it.
    """
    settings = settings or get_settings()
    # LightGBM/OpenMP and BLAS pools would fight uvicorn for two cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    writer = AuditWriter(settings)
    if row_sink is None:
        row_sink = SpoolWriter(settings) if settings.serving.profiling_enabled else NoopSink()
    names = list(dict.fromkeys([settings.serving.default_model, *settings.serving.models]))
    holder = ModelHolder(model_source or RegistrySource(settings), _admin_events(writer), names)
    components = Components(
        settings=settings,
        keys=KeyStore(settings, ttl_s=key_cache_s),
        limiter=RateLimiter(settings.serving.default_rate),
        quotas=Quotas(settings),
        holder=holder,
        executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix="aipaas-model"),
        sink=row_sink,
        metrics=Metrics(),
    )
    app = FastAPI(
        title="aipaas serving",
        summary="Predictions from the registry's champion: keyed, rate-limited, audited.",
        version="0.1.0",
        lifespan=_lifespan(components, writer, follow=follow),
    )
    app.state.components = components
    app.openapi = _openapi_with_signatures(app, holder)  # type: ignore[method-assign]
    app.state.writer = writer
    app.include_router(health.router)
    app.include_router(predict.router)
    app.include_router(feedback.router)
    app.include_router(admin.router)
    app.include_router(usage.router)
    errors.install(app)
    app.add_middleware(
        AuditMiddleware, settings=settings, writer=writer, metrics=components.metrics
    )
    return app


def _admin_events(writer: AuditWriter) -> AuditEvent:
    """The holder's events (loaded, swapped, load failed) as admin records in the trail."""

    def on_event(event: str, model: str, version: str | None, detail: dict[str, Any]) -> None:
        writer.submit(
            AuditRecord(
                kind="admin",
                event=event,
                model=model,
                version=version,
                detail=orjson.dumps(detail, option=orjson.OPT_SORT_KEYS).decode(),
            )
        )

    return on_event


def _lifespan(components: Components, writer: AuditWriter, *, follow: bool) -> Any:
    """Load every champion, follow them while serving; on the way out, flush and close."""
    holder, settings, sink = components.holder, components.settings, components.sink

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for name in holder.names:
            outcome = await asyncio.to_thread(holder.refresh, name)
            log.info("startup: %s -> %s", name, outcome)
        task = asyncio.create_task(follow_champions(holder, settings)) if follow else None
        if task is not None:
            task.add_done_callback(_follower_died(holder))
        try:
            yield
        finally:
            if task is not None and not task.done():  # a dead one was reported already
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            components.executor.shutdown(wait=True)
            close_sink = getattr(sink, "close", None)
            if close_sink is not None:  # e.g. the spool writer releases its segment
                close_sink()
            await asyncio.to_thread(writer.close)

    return lifespan
