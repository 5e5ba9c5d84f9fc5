"""Dependencies as ``Annotated`` aliases; auth and rate limits attach per router.

Authentication is async and hits the database only on a key-cache miss (in
a worker thread), so the event loop never blocks on it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request

from aipaas.keys import ApiKey, KeyRejected, KeyStore, RateLimiter, retry_after_header
from aipaas.settings import Settings
from serving.holder import ModelHolder, ServedModel
from serving.metrics import Metrics
from serving.middleware import RequestContext
from serving.sink import RowSink

MODEL_HEADER = "x-model"

ANONYMOUS = ApiKey(
    id="anonymous",
    name="anonymous (auth disabled)",
    scopes=("admin",),
    rate=None,
    created_at="",
    expires_at=None,
    revoked_at=None,
)


@dataclass
class Components:
    """What the lifespan builds and every request shares."""

    settings: Settings
    keys: KeyStore
    limiter: RateLimiter
    holder: ModelHolder
    executor: ThreadPoolExecutor  # one thread: the model never fights itself for cores
    sink: RowSink
    metrics: Metrics


def get_components(request: Request) -> Components:
    return request.app.state.components  # type: ignore[no-any-return]


def get_context(request: Request) -> RequestContext:
    return request.scope["state"]["ctx"]  # type: ignore[no-any-return]


ComponentsDep = Annotated[Components, Depends(get_components)]
ContextDep = Annotated[RequestContext, Depends(get_context)]


def get_settings_dep(c: ComponentsDep) -> Settings:
    return c.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def authenticate(request: Request, c: ComponentsDep, ctx: ContextDep) -> ApiKey:
    """The caller's key (401 if missing or not valid), recorded on the request."""
    if not c.settings.serving.auth_enabled:
        key = ANONYMOUS
    else:
        header = request.headers.get("authorization")
        try:
            key = c.keys.authenticate_cached(header)
            if key is None:
                key = await anyio.to_thread.run_sync(c.keys.authenticate, header)
        except KeyRejected as err:
            raise HTTPException(
                err.status, err.message, headers={"WWW-Authenticate": "Bearer"}
            ) from err
    ctx.key_id, ctx.owner = key.id, key.name
    return key


ApiKeyDep = Annotated[ApiKey, Depends(authenticate)]


def model_name(request: Request, c: Components) -> str:
    """The addressed model: path ``/models/{name}/...``, else ``X-Model``, else the default."""
    return (
        request.path_params.get("name")
        or request.headers.get(MODEL_HEADER)
        or c.settings.serving.default_model
    )


class Scope:
    """Router dependency: the key must hold ``scope`` (for the addressed model)."""

    def __init__(self, scope: str, *, per_model: bool = False) -> None:
        self.scope = scope
        self.per_model = per_model

    async def __call__(
        self, request: Request, key: ApiKeyDep, c: ComponentsDep, ctx: ContextDep
    ) -> ApiKey:
        model = model_name(request, c) if self.per_model else None
        if model is not None:
            ctx.model = model
        if not key.allows(self.scope, model):
            target = f" on model {model!r}" if model else ""
            raise HTTPException(403, f"API key {key.id} lacks scope {self.scope!r}{target}")
        return key


async def rate_limit(key: ApiKeyDep, c: ComponentsDep) -> None:
    """Token bucket per key: 429 with ``Retry-After`` when empty."""
    if not c.settings.serving.rate_limit_enabled or key is ANONYMOUS:
        return
    wait = c.limiter.acquire(key.id, key.rate)
    if wait > 0:
        rate = key.rate or c.settings.serving.default_rate
        raise HTTPException(
            429,
            f"rate limit of {rate} exceeded for key {key.id}",
            headers={"Retry-After": retry_after_header(wait)},
        )


async def served_model(request: Request, c: ComponentsDep, ctx: ContextDep) -> ServedModel:
    """The addressed model's current version (404 unknown model, 503 none loaded yet)."""
    name = model_name(request, c)
    ctx.model = name
    if name not in c.holder.names:
        raise HTTPException(404, f"model {name!r} is not served here (served: {c.holder.names})")
    served = c.holder.get(name)
    if served is None:
        reason = c.holder.last_error.get(name) or "no version has the alias 'champion' yet"
        raise HTTPException(503, f"model {name!r} has no champion loaded: {reason}")
    ctx.version = served.version
    return served


ServedModelDep = Annotated[ServedModel, Depends(served_model)]
