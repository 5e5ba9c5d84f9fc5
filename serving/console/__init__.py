"""The web console at ``/console``: models, drift, usage, keys, audit, a "try it" panel.

Server-rendered (Jinja2) pages on the serving app itself, so the console
needs no second server, works offline (no CDN, one stylesheet, a few lines
of script) and its requests are audited like any other. Admins log in with
an admin key, exchanged for a signed session cookie (:mod:`.auth`); forms
carry a per-session CSRF token. Routes are in :mod:`.routes`, what each page
shows in :mod:`.views`. Nothing of it is in the OpenAPI schema.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from serving.console import routes
from serving.console.auth import (
    CsrfRefusedError,
    LoginRequiredError,
    LoginThrottle,
    SessionCodec,
    logged_out,
)


def install(app: FastAPI) -> None:
    """Add the console's routes and static files to ``app``."""
    settings = app.state.components.settings
    app.state.console_sessions = SessionCodec(
        settings, ended_elsewhere=lambda session: logged_out(settings, session)
    )
    app.state.console_logins = LoginThrottle()
    app.include_router(routes.router)
    app.add_exception_handler(LoginRequiredError, _to_login)
    app.add_exception_handler(CsrfRefusedError, _csrf_refused)


async def _to_login(request: Request, exc: Exception) -> Response:
    response = RedirectResponse(f"{routes.base(request)}/login", status_code=303)
    response.headers["Cache-Control"] = "no-store"
    return response


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    message = (
        "This form was not sent from a page of your current console session "
        "(missing or wrong CSRF token). Nothing was changed; reload the page and try again."
    )
    return routes.render(request, "error.html", {"message": message}, status_code=403)
