"""Pure ASGI middleware: request id, body limit, end user, timing, audit, metrics.

It wraps every HTTP request, so rejected ones (401, 413, 404, 422...) are
audited like answered ones. The response start is held until the request's
audit record is committed by the group-commit writer: a client never sees a
response the trail does not have. If the audit write fails or does not
commit within the writer's ``wait_s`` (the platform database is down or not
answering), the client gets 503 with ``Retry-After`` instead of an unaudited
answer, and the next request tries again: nothing needs restarting.

Probes, the docs, and the files of an app's static folder as they are
served are not client requests of the API and are not audited (a request
for a file that is not there is: a 404 like any other).

An application may say whom a request is for with ``X-End-User``: the
record keeps only its keyed pseudonym (:func:`aipaas.audit.end_user_pseudonym`),
never the id. A value longer than :data:`END_USER_MAX_BYTES` (UTF-8) or
holding a control character is refused with 422 before any route runs, and
that refusal is audited without an end user (and without a key: the key
is not looked at yet).
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aipaas.audit import (
    AuditRecord,
    AuditWriter,
    PredictionRecord,
    end_user_pseudonym,
    input_hmac,
)
from aipaas.db import DatabaseUnavailableError
from aipaas.settings import Settings
from serving import errors
from serving.metrics import Metrics, route_label

_PREFIX = secrets.token_hex(6)
_counter = itertools.count(1)


def _new_prefix() -> None:
    """A forked process (a replica forked by its supervisor) never reuses its parent's ids."""
    global _PREFIX, _counter
    _PREFIX = secrets.token_hex(6)
    _counter = itertools.count(1)


os.register_at_fork(after_in_child=_new_prefix)


def _next_id() -> str:
    """Unique request ids without a syscall per request: a random process prefix and a counter."""
    return f"{_PREFIX}{next(_counter):012x}"


# Probes and docs are not client requests; everything else is audited.
UNAUDITED = frozenset(
    {
        *("/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json"),
        "/redoc",
        # the Open Inference Protocol's probes and server metadata
        *("/v2", "/v2/health/live", "/v2/health/ready"),
    }
)
# The docs' and the console's own scripts and styles.
UNAUDITED_PREFIX = ("/docs-static/", "/console/static/")
END_USER_HEADER = b"x-end-user"
REPLICA_HEADER = b"x-aipaas-replica"
END_USER_MAX_BYTES = 128


@dataclass(slots=True)
class RequestContext:
    """What the handlers learn about a request, for its audit record."""

    request_id: str
    key: Any = None  # the accepted aipaas.inference.keys.ApiKey
    key_id: str | None = None
    owner: str | None = None
    model: str | None = None
    version: str | None = None
    compute_s: float | None = None
    predictions: list[PredictionRecord] = field(default_factory=list)
    end_user: str | None = None  # the pseudonym of X-End-User, never the raw id
    detail: dict[str, Any] | None = None  # goes into the record's ``detail`` (JSON)
    event: str | None = None  # e.g. "canary.fallback": the challenger failed, the champion answered
    # Called with the record once it is committed (the Guard sets it: quota counts).
    on_committed: Callable[[AuditRecord], None] | None = None
    # Answered by the app's static files (serving.static_dir): a file served is not audited.
    static: bool = False


END_USER_PROBLEM = (
    f"X-End-User must be 1 to {END_USER_MAX_BYTES} bytes of UTF-8 text without control characters"
)


def end_user_id(value: bytes) -> str | None:
    """The end-user id an ``X-End-User`` header value carries, or None if it is not acceptable."""
    if not value or len(value) > END_USER_MAX_BYTES:
        return None
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        return None
    return text


def context(scope: Scope) -> RequestContext:
    return scope["state"]["ctx"]  # type: ignore[no-any-return]


class AuditMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        writer: AuditWriter,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.writer = writer
        self.metrics = metrics
        self.metrics_enabled = settings.serving.metrics_enabled
        self.audit_enabled = settings.serving.audit_enabled
        self.max_body = settings.serving.max_body_bytes
        self.price = settings.serving.cost_per_compute_second
        self.hmac_key = settings.audit.hmac_key.get_secret_value().encode()
        self.settings = settings
        # Which replica answered (its pid), when there are several: for operators and tests.
        self.replica = (
            [(REPLICA_HEADER, str(os.getpid()).encode())] if settings.serving.replicas > 1 else []
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        ctx = RequestContext(request_id=_next_id())
        scope.setdefault("state", {})["ctx"] = ctx
        path: str = scope["path"]
        body = b""
        too_large = False
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body, too_large = await self._read_body(scope, receive)

        sent_body = False

        async def replay() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        audited = (
            self.audit_enabled and path not in UNAUDITED and not path.startswith(UNAUDITED_PREFIX)
        )
        state = {"started": False, "swallow": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", ctx.request_id.encode()))
                headers.extend(self.replica)
                message = {**message, "headers": headers}
                served_file = ctx.static and status < 400
                err = await self._finish(ctx, scope, status, t0, body, audited and not served_file)
                if err is not None:
                    state["swallow"] = True
                    ids = [(b"x-request-id", ctx.request_id.encode()), *self.replica]
                    await _send_unaudited(send, err, ids)
                    return
            elif state["swallow"]:
                return
            await send(message)

        if too_large:
            detail = orjson.dumps({"detail": f"request body exceeds {self.max_body} bytes"})
            await _send_plain(send_wrapper, 413, detail)
            return
        problem = self._end_user(scope, ctx)
        if problem is not None:
            await _send_plain(send_wrapper, 422, orjson.dumps({"detail": problem}))
            return
        try:
            await self.app(scope, replay, send_wrapper)
        except Exception:
            if not state["started"]:
                # The app crashed before answering; the outer error handler
                # sends the 500, the trail still gets its record.
                await self._finish(ctx, scope, 500, t0, body, audited)
            raise

    def _end_user(self, scope: Scope, ctx: RequestContext) -> str | None:
        """Set ``ctx.end_user`` from ``X-End-User``; what is wrong with the value, if anything."""
        for name, value in scope.get("headers", ()):
            if name == END_USER_HEADER:
                text = end_user_id(value)
                if text is None:
                    return END_USER_PROBLEM
                ctx.end_user = end_user_pseudonym(self.settings, text)
                return None
        return None

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, bool]:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body:
                        return b"", True
                except ValueError:
                    pass
                break
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False

    async def _finish(
        self, ctx: RequestContext, scope: Scope, status: int, t0: float, body: bytes, audited: bool
    ) -> DatabaseUnavailableError | None:
        """Audit (and wait for the commit) and count; why the audit write failed, if it did.

        The metrics count the status the client gets: 503 when the record failed.
        """
        latency = time.perf_counter() - t0
        path: str = scope["path"]
        cost = (ctx.compute_s or 0.0) * self.price
        if not audited:
            self._observe(scope, ctx, status, latency)
            if ctx.predictions:  # still joinable by /feedback, without waiting
                self.writer.submit(None, ctx.predictions)
            if ctx.on_committed is not None:  # not in the trail (seq 0): counted in memory
                ctx.on_committed(AuditRecord(key_id=ctx.key_id, status=status, cost=cost))
            return None
        record = AuditRecord(
            request_id=ctx.request_id,
            key_id=ctx.key_id,
            owner=ctx.owner,
            route=path,
            model=ctx.model,
            version=ctx.version,
            input_hmac=input_hmac(self.hmac_key, body) if body else None,
            status=status,
            latency_ms=latency * 1000.0,
            compute_s=ctx.compute_s,
            cost=cost,
            end_user=ctx.end_user,
            event=ctx.event,
            detail=orjson.dumps(ctx.detail, option=orjson.OPT_SORT_KEYS).decode()
            if ctx.detail
            else None,
        )
        try:
            await self.writer.commit(record, ctx.predictions)
        except DatabaseUnavailableError as err:  # the client gets 503
            errors.log_unavailable(err)  # once in a while, not per request
            self._observe(scope, ctx, 503, latency)
            return err
        self._observe(scope, ctx, status, latency)
        if ctx.on_committed is not None:
            ctx.on_committed(record)
        return None

    def _observe(self, scope: Scope, ctx: RequestContext, status: int, latency: float) -> None:
        if self.metrics_enabled:
            self.metrics.observe(route_label(scope), ctx.model, ctx.version, status, latency)


async def _send_unaudited(
    send: Send, err: DatabaseUnavailableError, extra: list[tuple[bytes, bytes]]
) -> None:
    """The 503 in place of an answer whose record could not be made durable."""
    headers = [
        (b"content-type", b"application/json"),
        *((k.lower().encode(), v.encode()) for k, v in (errors.headers_for(err) or {}).items()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(errors.body_for(err))})


async def _send_plain(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
