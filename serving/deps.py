"""Dependencies as ``Annotated`` aliases; auth, scope and rate limit attach per router.

Every dependency is ``async`` and takes only the request: FastAPI runs a
plain ``def`` dependency in its thread pool, a thread hop per dependency
per request. Auth, scope and the rate limit are one :class:`Guard` so a
request resolves two dependencies, not eight. Authentication hits the
database only on a key-cache miss, in a worker thread, and waits for it at
most :data:`DB_WAIT_S`: a platform database that does not answer makes the
request a 503 (:class:`~aipaas.db.DatabaseUnavailableError`), never a hang.
A refusal is a core exception; :mod:`serving.errors` turns it into the HTTP
status.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request

from aipaas.db import DatabaseUnavailableError
from aipaas.exceptions import KeyRejectedError, RetiredSecretError
from aipaas.inference.keys import ApiKey, KeyStore, RateLimiter
from aipaas.inference.quotas import Quotas
from aipaas.settings import Settings
from serving.holder import ModelHolder
from serving.metrics import Metrics
from serving.middleware import RequestContext
from serving.shadow import Shadow
from serving.sink import RowSink

MODEL_HEADER = "x-model"
# How long a request waits on a platform database read (a key lookup, a quota
# count; milliseconds when it answers). Its refusal then waits for its own
# audit record too (aipaas.audit.COMMIT_WAIT_S at most).
DB_WAIT_S = 2.5
T = TypeVar("T")

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
    """What ``create_app`` builds and every request shares."""

    settings: Settings
    keys: KeyStore
    limiter: RateLimiter  # shared across replicas and hosts: ratelimit.limiter_for
    quotas: Quotas
    holder: ModelHolder
    executor: ThreadPoolExecutor  # one thread: the model never fights itself for cores
    sink: RowSink
    metrics: Metrics
    shadow: Shadow  # a shadow release's copies of requests, for its challenger
    # A canary's challenger computes on its own thread: a slow one never makes
    # the champion's clients queue behind it.
    canary_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="aipaas-canary")
    )


def components(request: Request) -> Components:
    return request.app.state.components  # type: ignore[no-any-return]


def context(request: Request) -> RequestContext:
    return request.scope["state"]["ctx"]  # type: ignore[no-any-return]


async def get_components(request: Request) -> Components:
    return components(request)


async def get_context(request: Request) -> RequestContext:
    return context(request)


async def get_settings_dep(request: Request) -> Settings:
    return components(request).settings


async def get_key(request: Request) -> ApiKey:
    """The key the router's :class:`Guard` accepted."""
    key = context(request).key
    if key is None:  # pragma: no cover - a route without a Guard
        raise KeyRejectedError("this route needs an API key")
    return key


ComponentsDep = Annotated[Components, Depends(get_components)]
ContextDep = Annotated[RequestContext, Depends(get_context)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ApiKeyDep = Annotated[ApiKey, Depends(get_key)]


def model_name(request: Request, c: Components) -> str:
    """The addressed model: path ``/models/{name}/...``, else ``X-Model``, else the default."""
    return (
        request.path_params.get("name")
        or request.headers.get(MODEL_HEADER)
        or c.settings.serving.default_model
    )


async def authenticate(request: Request, c: Components) -> ApiKey:
    """The caller's key.

    Raises:
        KeyRejectedError: missing, malformed, unknown, revoked or expired.
    """
    if not c.settings.serving.auth_enabled:
        return ANONYMOUS
    header = request.headers.get("authorization")
    key = c.keys.authenticate_cached(header)
    if key is None:
        key = await read_db(c.keys.authenticate, header)
    return key


async def read_db(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a worker thread, given up after :data:`DB_WAIT_S`.

    A database that stopped answering (paused, cut off) leaves the thread
    waiting on its socket; the request is answered 503 meanwhile.

    Raises:
        DatabaseUnavailableError: no answer in time.
    """
    try:
        with anyio.fail_after(DB_WAIT_S):
            return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
    except TimeoutError as err:
        raise DatabaseUnavailableError(
            "the platform database did not answer in time: retry shortly",
            reason=f"{getattr(fn, '__qualname__', fn)} took over {DB_WAIT_S:g} s",
        ) from err


class Guard:
    """Router dependency: a valid key holding ``scope``, within its rate and quotas.

    Raises :class:`KeyRejectedError` (401), :class:`ScopeDeniedError` (403),
    :class:`RateLimitedError` or :class:`QuotaExceededError` (429) from the
    key store, the limiter and the quotas. A key's quota counts reach the
    database only when due (every couple of seconds), in a worker thread;
    each committed request is then counted through ``ctx.on_committed``.
    A request made with a key's previous secret (during a rotation's grace
    period) is noted in its audit record's detail, and so is a previous
    secret refused after its grace period ended. A publishable key without
    an ``Origin`` among its own is a 401, audited under the key, before it
    takes a token from the rate limiter or counts against the quota.
    """

    def __init__(self, scope: str, *, per_model: bool = False, limited: bool = True) -> None:
        self.scope = scope
        self.per_model = per_model
        self.limited = limited

    async def __call__(self, request: Request) -> ApiKey:
        c = components(request)
        ctx = context(request)
        model = model_name(request, c) if self.per_model else None
        if model is not None:
            ctx.model = model
        try:
            key = await authenticate(request, c)
        except RetiredSecretError as err:
            ctx.detail = {"secret": "previous", "key_id": err.key_id, "ended_at": err.ended_at}
            raise
        ctx.key, ctx.key_id, ctx.owner = key, key.id, key.name
        origin = request.headers.get("origin")
        try:
            key.check_origin(origin)
        except KeyRejectedError:
            ctx.detail = {"origin": origin[:200] if origin else None}
            raise
        if key.previous_secret:
            ctx.detail = {"secret": "previous", "valid_until": key.prev_valid_until}
        limits = c.settings.serving.rate_limit_enabled and key is not ANONYMOUS
        if limits and key.limited:
            ctx.on_committed = c.quotas.record
        key.require(self.scope, model)
        if self.limited and limits:
            if c.limiter.blocking:  # the database store: a round trip, off the event loop
                await read_db(c.limiter.check, key)
            else:
                c.limiter.check(key)
            if c.quotas.due(key):
                await read_db(c.quotas.refresh, key)
            c.quotas.check(key)
        return key
