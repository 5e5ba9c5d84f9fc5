"""``aipaas serve``, ``aipaas mlflow``: one server in the foreground (``up`` runs them all)."""

from __future__ import annotations

from typing import Annotated

import typer

from aipaas.cli._app import app, settings


@app.command("serve")
def serve_cmd(
    host: Annotated[str | None, typer.Option(help="Bind address (default serving.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serving.port).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    replicas: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Serving processes behind the port (serving.replicas)."),
    ] = None,
) -> None:
    """Serve the champion of each configured model on /predict, with keys, limits and audit.

    Each replica is one process with one model thread, its own model copies,
    key cache, spool segment and audit writer (appends serialise on the
    database, so the chain stays one). With more than one, this process is
    uvicorn's supervisor: it holds the listening socket, the replicas accept
    from it, a replica that dies is started again, and SIGTERM or Ctrl-C
    stops them all; rate limits are then shared by every replica of this
    home. With ``serving.tls_certfile`` and ``serving.tls_keyfile`` it serves
    HTTPS only (checked first: both or neither, files that load).
    """
    import os

    import uvicorn

    from aipaas.ops.up import check_browser_settings, serving_tls

    s = settings()
    check_browser_settings(s)
    tls = serving_tls(s)
    workers = replicas or s.serving.replicas
    # The replicas are spawned and read their settings afresh: the count
    # decides their limiter, so they must see the one given here.
    os.environ["AIPAAS_SERVING__REPLICAS"] = str(workers)
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=host or s.serving.host,
        port=port or s.serving.port,
        workers=workers,
        log_level=log_level,
        access_log=False,  # the audit trail is the access log
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )


@app.command("mlflow")
def mlflow_cmd(
    host: Annotated[str | None, typer.Option(help="Bind address (default mlflow.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default mlflow.port).")] = None,
) -> None:
    """Run the MLflow tracking server (SQLite + artifacts under AIPAAS_HOME) in the foreground."""
    from aipaas.ops.tracking_server import run_server, server_command

    s = settings()
    typer.echo(" ".join(server_command(s, host=host, port=port)))
    typer.echo(f"MLflow UI: http://{host or s.mlflow.host}:{port or s.mlflow.port}")
    raise typer.Exit(run_server(s, host=host, port=port))
