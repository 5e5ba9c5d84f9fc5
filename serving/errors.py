"""Core errors -> HTTP responses, in one table.

The core raises the exceptions of :mod:`aipaas.exceptions` and knows nothing
of HTTP; this module is where each becomes a status, with the headers a
client needs to act on it (``WWW-Authenticate`` on a 401, ``Retry-After`` on
a 429). Every handler answers ``{"detail": "<the error's message>"}``, the
same body FastAPI gives an ``HTTPException``. An error not in the table is a
bug: it stays a 500 and is logged.
"""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from aipaas.exceptions import (
    AipaasError,
    AlreadyLabelledError,
    KeyRejectedError,
    ModelNotFoundError,
    RateLimitedError,
    RegistryUnavailableError,
    ScopeDeniedError,
    UnknownRequestError,
)


class ModelNotReadyError(AipaasError):
    """A served model has no version loaded yet: no champion, or it failed to load.

    Raised by the serving tier itself (the holder is serving's), so it lives
    here rather than in the core's tree.
    """


STATUS: dict[type[AipaasError], int] = {
    KeyRejectedError: 401,  # who are you: missing, malformed, unknown, revoked, expired
    ScopeDeniedError: 403,  # known, but not allowed this call
    ModelNotFoundError: 404,  # a model this process does not serve
    UnknownRequestError: 404,  # feedback for a request id never answered
    AlreadyLabelledError: 409,  # a label is final
    RateLimitedError: 429,
    RegistryUnavailableError: 503,
    ModelNotReadyError: 503,
}


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))


def headers_for(err: AipaasError) -> dict[str, str] | None:
    """The headers that tell a client what to do about ``err``."""
    if isinstance(err, KeyRejectedError):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(err, RateLimitedError):
        return {"Retry-After": retry_after(err.retry_after_s)}
    return None


def status_for(err: AipaasError) -> int:
    """The status of ``err``'s nearest class in :data:`STATUS`."""
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    raise LookupError(f"{type(err).__name__} has no HTTP status")  # pragma: no cover


async def _respond(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, AipaasError)
    return JSONResponse({"detail": str(err)}, status_code=status_for(err), headers=headers_for(err))


def install(app: FastAPI) -> None:
    """Register one handler per class in :data:`STATUS`; anything else stays a 500."""
    for cls in STATUS:
        app.add_exception_handler(cls, _respond)
