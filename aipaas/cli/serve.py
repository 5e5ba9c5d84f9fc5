"""``aipaas serve``: the FastAPI serving tier under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from aipaas.cli._app import app, settings


@app.command("serve")
def serve_cmd(
    host: Annotated[str | None, typer.Option(help="Bind address (default serving.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serving.port).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve the champion of each configured model on /predict, with keys, limits and audit.

    One process, one worker: the model runs on one thread, and the audit
    writer, key cache and rate limits live in this process. Scale out with
    replicas behind a load balancer and the platform DB on PostgreSQL.
    """
    import uvicorn

    s = settings()
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=host or s.serving.host,
        port=port or s.serving.port,
        workers=1,
        log_level=log_level,
        access_log=False,  # the audit trail is the access log
    )
