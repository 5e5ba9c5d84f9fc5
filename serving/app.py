"""The serving app factory: ``uvicorn serving.app:create_app --factory``.

The lifespan opens the platform database and the audit writer, loads each
served model's champion (``/readyz`` is 503 until the default one is in)
and the challenger of a canary or shadow release running, and starts the
task that follows both.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fastapi_offline
import orjson
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.openapi.models import HTTPBearer
from fastapi.openapi.utils import (
    get_openapi,
    validation_error_definition,
    validation_error_response_definition,
)
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from aipaas.audit import AuditRecord, AuditWriter
from aipaas.exceptions import ConfigurationError
from aipaas.inference.keys import KeyStore
from aipaas.inference.quotas import Quotas
from aipaas.inference.ratelimit import limiter_for
from aipaas.monitoring.spool import SpoolWriter
from aipaas.settings import Settings, get_settings
from serving import console, errors
from serving.cors import AllowedOrigins, CORSMiddleware
from serving.deps import Components, Guard
from serving.holder import (
    AuditEvent,
    ModelHolder,
    ModelSource,
    RegistrySource,
    canary_reader,
    follow_champions,
)
from serving.metrics import Metrics
from serving.middleware import UNAUDITED, AuditMiddleware
from serving.middleware import context as request_context
from serving.routers import admin, cards, feedback, health, oip, predict, usage
from serving.shadow import Shadow
from serving.sink import NoopSink, RowSink

log = logging.getLogger(__name__)

BEARER = "bearer"  # the security scheme's name in the OpenAPI components
DOCS_STATIC = "/docs-static"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"


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


def _openapi_with_signatures(app: FastAPI, holder: ModelHolder, settings: Settings) -> Any:
    """OpenAPI whose predict bodies are the loaded versions' signature schemas.

    The routes exist before any model is loaded and a swap may change the
    signature, so the schema is rebuilt on each request for it (docs only).
    Each keyed operation also gets the bearer scheme (the Authorize button
    of ``/docs``) and every operation its error responses, both derived
    from the routes' dependencies and :data:`serving.errors.TABLE`.
    """

    def openapi() -> dict[str, Any]:
        spec = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        _signature_bodies(spec, holder)
        _document_refusals(spec, app, settings)
        oip.document(spec)  # the /v2 routes answer the protocol's {"error": ...}
        return spec

    return openapi


def _signature_bodies(spec: dict[str, Any], holder: ModelHolder) -> None:
    """Each ``.../predict`` body: one record of the served signature, or a list of them."""
    default = holder.get(holder.names[0]) if holder.names else None
    for path, op in spec.get("paths", {}).items():
        if not path.endswith("/predict") or "post" not in op:
            continue
        if path.startswith("/models/"):
            # one schema per served model under the same path: list them
            schemas = [
                m.record_model.model_json_schema(by_alias=True) for m in holder.all().values()
            ]
            record: dict[str, Any] = {"oneOf": schemas} if schemas else {"type": "object"}
        elif default is not None:
            record = default.record_model.model_json_schema(by_alias=True)
        else:
            record = {"type": "object"}
        op["post"]["requestBody"]["content"]["application/json"]["schema"] = {
            "oneOf": [record, {"type": "array", "items": record}]
        }


def _document_refusals(spec: dict[str, Any], app: FastAPI, settings: Settings) -> None:
    """The bearer scheme on keyed operations, and every operation's error responses."""
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(errors.component_schemas())
    schemas.setdefault("ValidationError", validation_error_definition)
    schemas.setdefault(errors.VALIDATION_BODY, validation_error_response_definition)
    if settings.serving.auth_enabled:
        scheme = HTTPBearer(
            bearerFormat="aip_<id>_<secret>",
            description="An API key from `aipaas keys create`.",
        )
        scheme_doc = scheme.model_dump(mode="json", by_alias=True, exclude_none=True)
        components["securitySchemes"] = {BEARER: scheme_doc}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        traits = _traits(route, context.path_format or route.path_format, settings)
        path = spec.get("paths", {}).get(context.path_format, {})
        for method in route.methods or ():
            op = path.get(method.lower())
            if op is None or not traits:
                continue
            op["responses"].update(errors.responses(traits))
            if "keyed" in traits:
                op["security"] = [{BEARER: []}]


def _dependency_calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _dependency_calls(sub)


def _traits(route: APIRoute, path: str, settings: Settings) -> set[str]:
    """What may go wrong on ``route`` (the rows of :data:`serving.errors.TABLE` it meets)."""
    if path in UNAUDITED:  # probes and docs: no key, nothing to refuse
        return set()
    calls = list(_dependency_calls(route.dependant))
    guard = next((c for c in calls if isinstance(c, Guard)), None)
    traits = {"audited", *(str(t) for t in route.tags)}
    if guard is not None and settings.serving.auth_enabled:
        traits.add("keyed")
    if guard is not None and guard.limited and settings.serving.rate_limit_enabled:
        traits.add("limited")
    if predict.served_model in calls:
        traits.add("model")
    if (route.methods or set()) & {"POST", "PUT", "PATCH"}:
        traits.add("body")
    if route.body_field is not None:  # FastAPI parses it (400 if it cannot)
        traits.add("parsed")
    if "{name}" in path:
        traits.add("named")
    return traits


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
    if settings.serving.replicas > 1:
        _stop_with_supervisor()
    # LightGBM/OpenMP and BLAS pools would fight uvicorn for two cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    writer = AuditWriter(settings)
    if row_sink is None:
        row_sink = SpoolWriter(settings) if settings.serving.profiling_enabled else NoopSink()
    # The default model and the allow-list; without one, every model with a
    # champion is discovered (at start-up and at each poll) and added here.
    allow = settings.serving.models
    names = list(dict.fromkeys([settings.serving.default_model, *allow]))
    metrics = Metrics(names, is_loaded=lambda m, v: holder.get_version(m, v) is not None)
    source = model_source or RegistrySource(settings)
    holder = ModelHolder(
        source,
        _admin_events(writer, metrics),
        names,
        discover=not allow,
        canaries=canary_reader(settings),
    )
    components = Components(
        settings=settings,
        keys=KeyStore(settings, ttl_s=key_cache_s),
        limiter=limiter_for(settings),
        quotas=Quotas(settings),
        holder=holder,
        executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix="aipaas-model"),
        sink=row_sink,
        metrics=metrics,
        shadow=Shadow(settings),
    )
    app = FastAPI(
        title="aipaas serving",
        summary="Predictions from the registry's champion: keyed, rate-limited, audited.",
        version="0.1.0",
        lifespan=_lifespan(components, writer, follow=follow),
        docs_url=None,  # served below from local assets, not a CDN
        redoc_url=None,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    app.state.components = components
    app.openapi = _openapi_with_signatures(app, holder, settings)  # type: ignore[method-assign]
    app.state.writer = writer
    _offline_docs(app)
    for router in (health, predict, cards, feedback, admin, usage, oip):
        app.include_router(router.router)
    errors.install(app)
    if settings.serving.console_enabled:
        console.install(app)
    if settings.serving.static_dir is not None:
        _static_files(app, settings.serving.static_dir)
    app.add_middleware(AuditMiddleware, settings=settings, writer=writer, metrics=metrics)
    # Outermost, so refusals from the audit middleware carry CORS headers too.
    app.add_middleware(CORSMiddleware, origins=AllowedOrigins(settings, ttl_s=key_cache_s))
    return app


def _stop_with_supervisor() -> None:
    """A replica ends when its supervisor (``aipaas serve --replicas N``) does, even by ``kill -9``.

    uvicorn stops its replicas on SIGTERM and Ctrl-C; a supervisor killed
    outright would leave them serving the port with nobody restarting them.
    Linux's parent-death signal closes that gap; elsewhere this does nothing.
    """
    supervisor = multiprocessing.parent_process()
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor.pid:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def _static_files(app: FastAPI, directory: Path) -> None:
    """An app's files at ``/`` (``index.html`` for a folder), same origin as ``/predict``.

    They answer only a GET or HEAD that no route matched (the router's
    default), so every API route keeps its answers, 405s included, whatever
    the folder holds. A file served is not audited (see
    :class:`serving.middleware.AuditMiddleware`).

    Raises:
        ConfigurationError: the folder does not exist.
    """
    if not directory.is_dir():
        raise ConfigurationError(
            f"serving.static_dir {str(directory)!r} is not a folder; create it or unset it"
        )
    files = StaticFiles(directory=directory, html=True)
    not_found = app.router.default

    async def static_or_not_found(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            request_context(scope).static = True
            await files(scope, receive, send)
        else:
            await not_found(scope, receive, send)

    app.router.default = static_or_not_found


def _offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their JS and CSS served by this app.

    FastAPI's defaults load them from a CDN, which leaves the pages blank on
    a machine without internet access; the files bundled with the
    fastapi-offline package are served from :data:`DOCS_STATIC` instead.
    """
    app.mount(DOCS_STATIC, StaticFiles(directory=DOCS_ASSETS), name="docs-static")
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{DOCS_STATIC}/{name}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=oauth2_redirect,
            swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, "redoc.standalone.js"),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False,
        )


def _admin_events(writer: AuditWriter, metrics: Metrics) -> AuditEvent:
    """The holder's events (loaded, swapped, load failed, refused): in the trail, and counted."""

    def on_event(event: str, model: str, version: str | None, detail: dict[str, Any]) -> None:
        metrics.on_model_event(event, model)
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
        await asyncio.to_thread(holder.discover)
        for name in list(holder.names):
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
            components.canary_executor.shutdown(wait=True)
            await asyncio.to_thread(components.shadow.close)  # a short bound for what is queued
            close_sink = getattr(sink, "close", None)
            if close_sink is not None:  # e.g. the spool writer releases its segment
                close_sink()
            await asyncio.to_thread(writer.close)

    return lifespan
