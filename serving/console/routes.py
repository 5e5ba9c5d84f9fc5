"""The console's pages: login, models and their cards, drift, usage, keys, audit, try it.

Every page but the login needs a session (:func:`session`); every form post
carries the session's CSRF token (:func:`checked_form`). Reads and writes go
through the core in a worker thread; the core audits key changes, and the
middleware audits every console request with the session's key id, so the
trail says which admin did what (``detail.console`` names the action).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from aipaas import audit
from aipaas.exceptions import AipaasError, KeyRejectedError
from aipaas.inference import keys
from aipaas.settings import Settings
from serving.console import views
from serving.console.auth import (
    COOKIE,
    LOGOUT_EVENT,
    CsrfRefusedError,
    LoginRequiredError,
    LoginThrottle,
    Session,
    SessionCodec,
    csrf_ok,
)
from serving.deps import components, context

HERE = Path(__file__).parent
STATIC = {"console.css": "text/css", "try.js": "text/javascript"}
# Console pages load only their own styles and script; a drift report only its inline images.
PAGE_CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/console", include_in_schema=False)


def codec(request: Request) -> SessionCodec:
    return request.app.state.console_sessions  # type: ignore[no-any-return]


def base(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}/console"


async def current_session(request: Request) -> Session | None:
    """The caller's session if its cookie is valid and its key still active and admin."""
    found = codec(request).read(request.cookies.get(COOKIE))
    if found is None:
        return None
    settings = components(request).settings
    key = await anyio.to_thread.run_sync(keys.get_key, settings, found.key_id)
    if key is None or not key.active or "admin" not in key.scopes:
        return None
    ctx = context(request)
    ctx.key_id, ctx.owner = key.id, key.name
    return found


async def session(request: Request) -> Session:
    """Dependency of every admin page: the session, else :class:`LoginRequiredError`."""
    found = await current_session(request)
    if found is None:
        raise LoginRequiredError
    return found


SessionDep = Annotated[Session, Depends(session)]


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form, last value of each field (the middleware has bounded its size)."""
    try:
        text = (await request.body()).decode()
    except UnicodeDecodeError:
        return {}
    return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}


async def checked_form(request: Request, current: SessionDep) -> dict[str, str]:
    """The posted form, only if it carries this session's CSRF token."""
    form = await read_form(request)
    if not csrf_ok(current, form.get("csrf")):
        raise CsrfRefusedError
    return form


FormDep = Annotated[dict[str, str], Depends(checked_form)]


def render(
    request: Request,
    name: str,
    data: dict[str, Any],
    *,
    status_code: int = 200,
    current: Session | None = None,
) -> HTMLResponse:
    """A page: never cached (it shows admin data), framed by no one, its own assets only."""
    values = {"base": base(request), "session": current, "page": name.removesuffix(".html")}
    response = templates.TemplateResponse(
        request, name, {**values, **data}, status_code=status_code
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _note(request: Request, action: str, **detail: Any) -> None:
    """Name the console action in the request's audit record."""
    ctx = context(request)
    ctx.detail = {**(ctx.detail or {}), "console": action, **detail}


# -- login -----------------------------------------------------------------------------


@router.get("")
@router.get("/")
async def home(request: Request) -> RedirectResponse:
    return RedirectResponse(f"{base(request)}/models", status_code=303)


@router.get("/login")
async def login_page(request: Request) -> Response:
    if await current_session(request) is not None:
        return RedirectResponse(f"{base(request)}/models", status_code=303)
    message = "You are logged out." if request.query_params.get("bye") else None
    return render(request, "login.html", {"message": message})


@router.post("/login")
async def login(request: Request) -> Response:
    """Exchange an admin key for a session cookie; any other key gets the form again."""
    settings = components(request).settings
    throttle: LoginThrottle = request.app.state.console_logins
    client = request.client.host if request.client else "unknown"
    wait = throttle.retry_after(client)
    if wait > 0:
        error = f"Too many failed logins from {client}; try again in {math.ceil(wait)} s."
        refused = render(request, "login.html", {"error": error}, status_code=429)
        refused.headers["Retry-After"] = str(math.ceil(wait))
        return refused
    token = (await read_form(request)).get("key", "").strip()
    try:
        key = await anyio.to_thread.run_sync(
            components(request).keys.authenticate, f"Bearer {token}"
        )
    except KeyRejectedError as err:
        throttle.failed(client)
        return render(request, "login.html", {"error": f"Not accepted: {err}"}, status_code=401)
    if "admin" not in key.scopes:
        throttle.failed(client)
        error = f"Key {key.id} ({key.name}) has no admin scope; the console needs an admin key."
        return render(request, "login.html", {"error": error}, status_code=403)
    current, cookie = codec(request).issue(key.id, key.name)
    ctx = context(request)
    ctx.key_id, ctx.owner = key.id, key.name
    await anyio.to_thread.run_sync(_audit, settings, "console.login", current)
    response = RedirectResponse(f"{base(request)}/models", status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(codec(request).max_age_s),
        path=base(request),
        httponly=True,
        samesite="strict",
        secure=settings.serving.tls_certfile is not None,
    )
    return response


def _audit(settings: Settings, event: str, current: Session) -> None:
    audit.append_event(
        settings, event, {"session": current.sid}, key_id=current.key_id, owner=current.owner
    )


@router.post("/logout")
async def logout(request: Request, current: SessionDep, _form: FormDep) -> Response:
    codec(request).end(current)
    await anyio.to_thread.run_sync(_audit, components(request).settings, LOGOUT_EVENT, current)
    response = RedirectResponse(f"{base(request)}/login?bye=1", status_code=303)
    response.delete_cookie(COOKIE, path=base(request), httponly=True, samesite="strict")
    return response


# -- pages -----------------------------------------------------------------------------


@router.get("/models")
async def models(request: Request, current: SessionDep) -> Response:
    c = components(request)
    found, problem = await anyio.to_thread.run_sync(views.models_view, c.settings, c.holder)
    return render(
        request,
        "models.html",
        {
            "models": found,
            "problem": problem,
            "mlflow_ui": views.mlflow_ui(c.settings),
            "prefect_ui": views.prefect_ui(c.settings),
        },
        current=current,
    )


@router.get("/models/{model}/card")
async def model_card(request: Request, model: str, current: SessionDep) -> Response:
    """A version's model card (``?version=N``, default the champion) inside the console."""
    version = request.query_params.get("version") or None
    view = await anyio.to_thread.run_sync(
        views.card_view, components(request).settings, model, version
    )
    if view.body is None:
        message = view.problem or f"No model card for {model!r}."
        return render(
            request, "error.html", {"message": message}, status_code=view.status, current=current
        )
    return render(request, "card.html", {"card": view}, current=current)


@router.get("/drift")
async def drift(request: Request, current: SessionDep) -> Response:
    c = components(request)
    found = await anyio.to_thread.run_sync(views.drift_view, c.settings, c.holder.names)
    return render(request, "drift.html", {"models": found}, current=current)


@router.get("/drift/{model}/{name}")
async def drift_report(request: Request, model: str, name: str, current: SessionDep) -> Response:
    """One drift report: this host's file, else the copy the check stored in MLflow.

    Only from the model's drift folder or from a run its drift history
    names; anything else is a 404 page, an MLflow that does not answer a 503.
    """
    found = await anyio.to_thread.run_sync(
        views.report_source, components(request).settings, model, name
    )
    response: Response
    if found.path is not None:
        response = FileResponse(found.path, media_type="text/html; charset=utf-8")
    elif found.content is not None:
        response = Response(found.content, media_type="text/html; charset=utf-8")
    else:
        message = found.problem or f"No drift report {name!r} for model {model!r}."
        return render(
            request, "error.html", {"message": message}, status_code=found.status, current=current
        )
    response.headers["Content-Security-Policy"] = REPORT_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def _bucket(request: Request) -> str:
    return "hour" if request.query_params.get("bucket") == "hour" else "day"


@router.get("/usage")
async def usage(request: Request, current: SessionDep) -> Response:
    view = await anyio.to_thread.run_sync(
        views.usage_view, components(request).settings, _bucket(request)
    )
    return render(request, "usage.html", {"usage": view}, current=current)


@router.get("/usage.png")
async def usage_chart(request: Request, current: SessionDep) -> Response:
    png = await anyio.to_thread.run_sync(
        views.usage_png, components(request).settings, _bucket(request)
    )
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/audit")
async def audit_page(request: Request, current: SessionDep) -> Response:
    view = await anyio.to_thread.run_sync(views.audit_view, components(request).settings)
    return render(request, "audit.html", {"audit": view}, current=current)


@router.get("/try")
async def try_it(request: Request, current: SessionDep) -> Response:
    found = views.try_models(components(request).holder)
    examples = {m.name: json.dumps(m.example, indent=2) for m in found}
    root = request.scope.get("root_path", "")
    return render(
        request,
        "try.html",
        {"models": found, "examples": examples, "predict_url": f"{root}/predict"},
        current=current,
    )


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """The console's stylesheet and script: a fixed list, cached by the browser for an hour."""
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(
        HERE / "static" / name,
        media_type=STATIC[name],
        headers={"Cache-Control": "public, max-age=3600"},
    )


# -- keys ------------------------------------------------------------------------------


async def _keys_page(
    request: Request,
    current: Session,
    *,
    created: tuple[keys.ApiKey, str] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    found = await anyio.to_thread.run_sync(keys.list_keys, components(request).settings)
    revoked = request.query_params.get("revoked")
    return render(
        request,
        "keys.html",
        {
            "keys": list(reversed(found)),
            "created": created,
            "error": error,
            "revoked": revoked,
            "scopes": keys.KNOWN_SCOPES,
        },
        status_code=status_code,
        current=current,
    )


@router.get("/keys")
async def keys_page(request: Request, current: SessionDep) -> Response:
    return await _keys_page(request, current)


def _scopes(form: dict[str, str]) -> str:
    return ",".join(s for s in keys.KNOWN_SCOPES if form.get(f"scope_{s}"))


@router.post("/keys")
async def create_key(request: Request, current: SessionDep, form: FormDep) -> Response:
    """Create a key (audited by the core as ``key.created``); its secret is on this page only."""
    settings = components(request).settings
    name = form.get("name", "").strip()
    scopes = _scopes(form)
    rate = form.get("rate", "").strip() or None
    if not name or not scopes:
        error = "A key needs a name and at least one scope."
        return await _keys_page(request, current, error=error, status_code=400)
    try:
        created = await anyio.to_thread.run_sync(
            lambda: keys.create_key(settings, name, scopes, rate=rate)
        )
    except AipaasError as err:
        return await _keys_page(request, current, error=str(err), status_code=400)
    _note(request, "key.created", key=created[0].id)
    return await _keys_page(request, current, created=created)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(
    request: Request, key_id: str, current: SessionDep, _form: FormDep
) -> Response:
    """Revoke a key (audited by the core as ``key.revoked``); serving refuses it within 2 s."""
    settings = components(request).settings
    try:
        await anyio.to_thread.run_sync(keys.revoke_key, settings, key_id)
    except AipaasError as err:
        return await _keys_page(request, current, error=str(err), status_code=404)
    _note(request, "key.revoked", key=key_id)
    return RedirectResponse(f"{base(request)}/keys?revoked={key_id}", status_code=303)
