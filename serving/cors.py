"""CORS for browser apps: exact origins from an allow-list, on every answer of the app routes.

A web page on another origin may call the routes an app needs
(:func:`app_route`: predictions, MLflow invocations, feedback, model info)
when its origin is in ``serving.cors_origins`` or among the origins of an
active publishable key (:class:`AllowedOrigins`, re-read every few seconds
like the key store). The answer names that exact origin, never ``*``: keys
travel in ``Authorization``, and no cookie is ever needed, so
``Access-Control-Allow-Credentials`` is never sent.

This is pure ASGI and sits outside the audit middleware, so the headers are
on refusals too (401, 403, 413, 422, 429, the audit trail's 503): a page
can read why it was refused. Preflights (``OPTIONS`` with
``Access-Control-Request-Method``) are answered here, before audit and auth:
204 for an allowed origin on an app route, 403 without any CORS header
otherwise (the browser then blocks the call). A disallowed origin gets no
CORS header on any answer. Admin, usage and audit routes are never
readable cross-origin.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import anyio
import orjson
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aipaas.db import DatabaseUnavailableError
from aipaas.inference import keys
from aipaas.settings import Settings

log = logging.getLogger(__name__)

APP_PATHS = frozenset({"/predict", "/invocations", "/feedback", "/model"})
APP_PREFIX = "/models/"
ALLOW_METHODS = "GET, POST"
ALLOW_HEADERS = "authorization, content-type, x-model, x-model-version, x-end-user"
EXPOSE_HEADERS = "x-request-id, retry-after, www-authenticate"
MAX_AGE = "600"  # seconds a browser may reuse a preflight's answer


def app_route(path: str) -> bool:
    """Whether a page on another origin may call ``path`` (the routes an app needs)."""
    return path in APP_PATHS or path.startswith(APP_PREFIX)


class AllowedOrigins:
    """``serving.cors_origins`` plus the origins of active publishable keys.

    The keys' origins are read from the database at most every ``ttl_s``, in
    a worker thread, and only when an origin is not in the settings' list: a
    new publishable key's origin is allowed, a revoked one's dropped, within
    ``ttl_s``.
    """

    def __init__(
        self,
        settings: Settings,
        ttl_s: float = 2.0,
        *,
        lookup: Callable[[], frozenset[str]] | None = None,
    ) -> None:
        self.configured = frozenset(keys.parse_origins(settings.serving.cors_origins))
        self._lookup = lookup or (lambda: keys.publishable_origins(settings))
        self._ttl = ttl_s
        self._from_keys: frozenset[str] = frozenset()
        self._at = -math.inf
        self._lock = anyio.Lock()

    async def allows(self, origin: str) -> bool:
        """Whether ``origin`` (an ``Origin`` header's value) may call the app routes."""
        normal = keys.normalize_origin(origin)
        if normal is None:  # "null" (a file or sandboxed page), or garbage
            return False
        if normal in self.configured:
            return True
        async with self._lock:
            if time.monotonic() - self._at >= self._ttl:
                try:
                    with anyio.fail_after(2.5):
                        self._from_keys = await anyio.to_thread.run_sync(
                            self._lookup, abandon_on_cancel=True
                        )
                except (DatabaseUnavailableError, TimeoutError) as err:
                    # The origins read last stay; the request itself is refused (503) by the audit.
                    log.debug("publishable origins unreadable, keeping the last: %s", err)
                self._at = time.monotonic()
        return normal in self._from_keys


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


class CORSMiddleware:
    """Answers preflights; puts the CORS headers on app-route answers to allowed origins."""

    def __init__(self, app: ASGIApp, *, origins: AllowedOrigins) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        origin = _header(scope, b"origin")
        preflight = (
            scope["method"] == "OPTIONS"
            and _header(scope, b"access-control-request-method") is not None
        )
        on_app_route = app_route(path)
        allowed = on_app_route and origin is not None and await self.origins.allows(origin)
        if preflight:
            await _preflight(send, origin if allowed else None, path)
            return
        if not on_app_route:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.add_vary_header("Origin")
                if allowed and origin is not None:
                    headers["access-control-allow-origin"] = origin
                    headers["access-control-expose-headers"] = EXPOSE_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_cors)


async def _preflight(send: Send, origin: str | None, path: str) -> None:
    """204 with the CORS grant for ``origin``; 403 without any CORS header when it is None."""
    headers = [(b"vary", b"Origin")]
    if origin is None:
        body = orjson.dumps({"detail": f"cross-origin calls to {path[:200]} are not allowed"})
        headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(body)).encode()))
        status = 403
    else:
        body = b""
        status = 204
        headers += [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", MAX_AGE.encode()),
        ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
