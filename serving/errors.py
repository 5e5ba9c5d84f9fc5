"""Core errors -> HTTP responses, and their OpenAPI documentation, from one table.

The core raises the exceptions of :mod:`aipaas.exceptions` and knows nothing
of HTTP; :data:`TABLE` is where each becomes a status, a body and the headers
a client needs to act on it (``WWW-Authenticate`` on a 401, ``Retry-After``
on a 429). Most answer :class:`~serving.schemas.ErrorOut`
(``{"detail": "<the error's message>"}``, the body FastAPI gives an
``HTTPException``); a quota or budget answers
:class:`~serving.schemas.QuotaExceededOut`, which says which limit and when
it resets. An error not in the table is a bug: it stays a 500 and is logged.

The same table documents every operation's error responses in the OpenAPI
schema (:func:`responses`): a row names the route *traits* where it can
happen (``keyed``: the route takes an API key; ``model``: a model version
answers it; ...), and the app's OpenAPI builder says which traits a route
has. :data:`EDGE` adds the answers the middleware and the framework give
before any route runs (413, a malformed ``X-End-User``, a body FastAPI
cannot parse, invalid parameters, an audit trail that cannot be written).

The platform database being away is a 503 with ``Retry-After`` wherever it
shows: a key lookup, a quota count, a feedback write (the driver's errors,
:data:`aipaas.db.UNAVAILABLE`, are caught here too, never a 500), or the
audit record (the middleware). The body names no host; the log says what
the driver said, once per :data:`LOG_EVERY_S`, not once per request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from aipaas.db import UNAVAILABLE, DatabaseUnavailableError, unavailable
from aipaas.exceptions import (
    AipaasError,
    AlreadyLabelledError,
    KeyRejectedError,
    ModelNotFoundError,
    QuotaExceededError,
    RateLimitedError,
    RegistryUnavailableError,
    ScopeDeniedError,
    UnknownRequestError,
    UnsignedVersionError,
)
from serving.schemas import ErrorOut, QuotaExceededOut

log = logging.getLogger(__name__)

REF = "#/components/schemas/"
# What a client is told to wait while the platform database is away: the
# first request after it is back succeeds, so a short wait is enough.
DB_RETRY_AFTER_S = 2.0
LOG_EVERY_S = 10.0
VALIDATION_BODY = "HTTPValidationError"  # FastAPI's 422 body (a list of errors)


class ModelNotReadyError(AipaasError):
    """A served model has no version loaded yet: no champion, or it failed to load.

    Raised by the serving tier itself (the holder is serving's), so it lives
    here rather than in the core's tree.
    """


@dataclass(frozen=True)
class Row:
    """What one error becomes over HTTP, and on which routes it can happen."""

    status: int
    doc: str  # one line for the OpenAPI description
    where: frozenset[str]  # route traits; any one of them is enough
    body: type[BaseModel] | str = ErrorOut  # a model, or the name of a component schema
    headers: tuple[str, ...] = ()


def _at(*traits: str) -> frozenset[str]:
    return frozenset(traits)


# Nearest class wins (``QuotaExceededError`` before ``RateLimitedError``).
TABLE: dict[type[AipaasError], Row] = {
    KeyRejectedError: Row(
        401,
        "no API key, or one that is malformed, unknown, revoked or expired",
        _at("keyed"),
        headers=("WWW-Authenticate",),
    ),
    ScopeDeniedError: Row(403, "the key lacks the scope this call needs", _at("keyed")),
    ModelNotFoundError: Row(404, "a model or version not served here", _at("model", "named")),
    UnsignedVersionError: Row(404, "a version that was never promoted", _at("model")),
    UnknownRequestError: Row(404, "no prediction with this request id", _at("feedback")),
    AlreadyLabelledError: Row(409, "this request already has its label", _at("feedback")),
    RateLimitedError: Row(429, "over the key's rate", _at("limited"), headers=("Retry-After",)),
    QuotaExceededError: Row(
        429,
        "past the key's quota or budget (names it, and when it resets)",
        _at("limited"),
        body=QuotaExceededOut,
        headers=("Retry-After",),
    ),
    RegistryUnavailableError: Row(
        503, "the registry did not answer", _at("model", "admin", "card")
    ),
    ModelNotReadyError: Row(503, "the model has no version loaded yet", _at("model")),
    DatabaseUnavailableError: Row(
        503,
        "the platform database is unreachable: nothing is answered without its audit "
        "record (retry after Retry-After)",
        _at("audited"),
        headers=("Retry-After",),
    ),
}

# Answered before a route runs: by the audit middleware or by FastAPI's validation.
EDGE: tuple[Row, ...] = (
    Row(400, "the body could not be parsed (not UTF-8 JSON)", _at("parsed")),
    Row(413, "the body exceeds serving.max_body_bytes", _at("body")),
    Row(422, "invalid body or parameters (names the field)", _at("audited"), VALIDATION_BODY),
    Row(422, "X-End-User is empty, too long or has control characters", _at("audited")),
    Row(
        503,
        "the audit trail could not be written",
        _at("audited"),
        headers=("Retry-After",),
    ),
)

# Models the error bodies refer to, for the OpenAPI components.
BODIES: tuple[type[BaseModel], ...] = (ErrorOut, QuotaExceededOut)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))


def headers_for(err: AipaasError) -> dict[str, str] | None:
    """The headers that tell a client what to do about ``err``."""
    if isinstance(err, KeyRejectedError):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(err, RateLimitedError):
        return {"Retry-After": retry_after(err.retry_after_s)}
    if isinstance(err, DatabaseUnavailableError):
        return {"Retry-After": retry_after(DB_RETRY_AFTER_S)}
    return None


def row_for(err: AipaasError) -> Row:
    """The row of ``err``'s nearest class in :data:`TABLE`."""
    for cls in type(err).__mro__:
        if cls in TABLE:
            return TABLE[cls]
    raise LookupError(f"{type(err).__name__} has no HTTP status")  # pragma: no cover


def status_for(err: AipaasError) -> int:
    """The status of ``err``'s nearest class in :data:`TABLE`."""
    return row_for(err).status


def body_for(err: AipaasError) -> dict[str, Any]:
    """The JSON body for ``err``: its message, and for a quota the limit and its reset."""
    if isinstance(err, QuotaExceededError):
        return QuotaExceededOut(
            detail=str(err),
            quota=err.quota,
            kind=err.kind,
            used=err.used,
            resets_at=err.resets_at,
        ).model_dump()
    return ErrorOut(detail=str(err)).model_dump()


_last_logged = [-math.inf]


def log_unavailable(err: DatabaseUnavailableError) -> None:
    """Say what the driver said, at most once per :data:`LOG_EVERY_S` (an outage, not a flood)."""
    now = time.monotonic()
    if now - _last_logged[0] >= LOG_EVERY_S:
        _last_logged[0] = now
        log.warning("platform database unavailable, answering 503: %s", err.reason)


async def _respond(request: Request, err: Exception) -> JSONResponse:
    if isinstance(err, UNAVAILABLE):  # the driver's own error, from any route or dependency
        err = unavailable(err)
    assert isinstance(err, AipaasError)
    if isinstance(err, DatabaseUnavailableError):
        log_unavailable(err)
    return JSONResponse(body_for(err), status_code=status_for(err), headers=headers_for(err))


def install(app: FastAPI) -> None:
    """One handler per class in :data:`TABLE` and per driver error; anything else stays a 500."""
    for cls in (*TABLE, *UNAVAILABLE):
        app.add_exception_handler(cls, _respond)


# --- OpenAPI -----------------------------------------------------------------------


def _name(body: type[BaseModel] | str) -> str:
    return body if isinstance(body, str) else body.__name__


def component_schemas() -> dict[str, Any]:
    """The error bodies' JSON schemas, for ``components.schemas``."""
    return {
        m.__name__: m.model_json_schema(ref_template=REF + "{model}", mode="serialization")
        for m in BODIES
    }


def responses(traits: Collection[str]) -> dict[str, Any]:
    """The error responses of an operation whose route has ``traits``, by status code."""
    rows = [r for r in (*TABLE.values(), *EDGE) if r.where & set(traits)]
    out: dict[str, Any] = {}
    for status in sorted({r.status for r in rows}):
        these = [r for r in rows if r.status == status]
        names = list(dict.fromkeys(_name(r.body) for r in these))
        refs = [{"$ref": REF + n} for n in names]
        schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
        response: dict[str, Any] = {
            "description": "; ".join(dict.fromkeys(r.doc for r in these)),
            "content": {"application/json": {"schema": schema}},
        }
        headers = list(dict.fromkeys(h for r in these for h in r.headers))
        if headers:
            response["headers"] = {
                h: {"schema": {"type": "string"}, "required": True} for h in headers
            }
        out[str(status)] = response
    return out
