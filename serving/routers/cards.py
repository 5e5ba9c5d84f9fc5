"""``GET /models/{name}/card``: a served model's model card, as Markdown or as an HTML page.

Keyed like ``/model`` (scope ``predict``, per model, rate-limited, audited):
whoever may call a model may read what it is for, what it was trained on,
how it scored and why it was promoted. ``?version=N`` names a registered
version (a rejected one too: its card says why); without it, the champion
this process serves (else the registry's, before it is loaded).

The card is the one stored with the version's training run
(:func:`aipaas.monitoring.card.read`), rendered from the records when none was
stored; ``X-Aipaas-Card`` says which. Markdown unless the client prefers
``text/html`` (``Accept``). The HTML page runs nothing: it is served
sandboxed, its own inline style only.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from aipaas.exceptions import ModelNotFoundError
from aipaas.monitoring import card
from aipaas.monitoring.card import ModelCard
from aipaas.settings import Settings
from aipaas.training import registry, tags
from serving.deps import Components, Guard, components, context

MARKDOWN = "text/markdown; charset=utf-8"
HTML = "text/html; charset=utf-8"
CARD_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
SOURCE_HEADER = "X-Aipaas-Card"  # "stored" (with the training run) or "rendered" (now)
# Accept media ranges and the card formats each one takes.
_MEDIA = {
    "text/html": ("html",),
    "application/xhtml+xml": ("html",),
    "text/markdown": ("markdown",),
    "text/x-markdown": ("markdown",),
    "text/plain": ("markdown",),
    "text/*": ("html", "markdown"),
    "*/*": ("html", "markdown"),
}

router = APIRouter(tags=["card"], dependencies=[Depends(Guard("predict", per_model=True))])

CARD_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The version's model card: Markdown, or HTML when `Accept` prefers it",
        "content": {
            "text/markdown": {"schema": {"type": "string"}},
            "text/html": {"schema": {"type": "string"}},
        },
    }
}


def wants_html(accept: str | None) -> bool:
    """The client prefers ``text/html`` to Markdown (``Accept`` with its q-values); else False."""
    best = {"html": 0.0, "markdown": 0.0}
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        for kind in _MEDIA.get(media.lower(), ()):
            best[kind] = max(best[kind], q)
    return best["html"] > best["markdown"]


def _version(name: str, version: str | None) -> str | None:
    """The version asked for, as the registry spells it; None: the champion.

    Raises:
        ModelNotFoundError: not a registry version number.
    """
    if version is None:
        return None
    asked = version.strip()
    if not (asked.isascii() and asked.isdigit()):
        raise ModelNotFoundError(
            f"model {name!r} has no version {version!r}: versions are registry numbers"
        )
    return str(int(asked))


def _champion(settings: Settings, name: str) -> str:
    """The registry's champion (before this process has loaded one)."""
    registry.connect(settings)
    found = registry.get_alias(name, tags.CHAMPION)
    if found is None:
        raise ModelNotFoundError(
            f"model {name!r} has no champion yet: ask for a version (?version=N)"
        )
    return found.version


def _served(c: Components, name: str) -> None:
    if name not in c.holder.names:
        raise ModelNotFoundError(f"model {name!r} is not served here (served: {c.holder.names})")


def _respond(made: ModelCard, html: bool) -> Response:
    headers = {
        "Vary": "Accept",
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        SOURCE_HEADER: "stored" if made.stored else "rendered",
    }
    if html:
        headers["Content-Security-Policy"] = CARD_CSP
        return Response(made.html, media_type=HTML, headers=headers)
    return Response(made.markdown, media_type=MARKDOWN, headers=headers)


@router.get("/models/{name}/card", response_class=Response, responses=CARD_DOC)
async def model_card(
    name: str,
    request: Request,
    version: Annotated[
        str | None, Query(description="Registry version number (default: the champion).")
    ] = None,
) -> Response:
    """The model card of a served model's version (default: the champion).

    Raises:
        ModelNotFoundError: not served here, no such version, or no card to show (404).
        RegistryUnavailableError: MLflow did not answer (503).
    """
    c = components(request)
    _served(c, name)
    asked = _version(name, version)
    if asked is None:
        served = c.holder.get(name)
        asked = served.version if served else None
    if asked is None:
        asked = await anyio.to_thread.run_sync(_champion, c.settings, name)
    context(request).version = asked
    made = await anyio.to_thread.run_sync(card.read, c.settings, name, asked)
    return _respond(made, wants_html(request.headers.get("accept")))
