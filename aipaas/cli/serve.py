"""``aipaas serve``, ``aipaas mlflow``: one server in the foreground (``up`` runs them all)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from aipaas.cli._app import app, settings
from aipaas.settings import Settings

APP = "serving.app:create_app"
# The libraries a replica imports before it answers, imported once by the
# supervisor of forked replicas: the app's (FastAPI, pandas, SQLAlchemy), MLflow
# with the flavours aipaas.training.registry.load_native loads, and skops, through
# which MLflow 3 loads scikit-learn-API models (alone about 4 s here). Not the
# app's own modules: a module may keep per-process state made at import (serving's
# request-id prefix), which forked replicas would share; those take 0.6 s.
PRELOAD = (
    "fastapi",
    "fastapi_offline",
    "pandas",
    "sqlalchemy.orm",
    "prometheus_client",
    "jinja2",
    "mlflow",
    "mlflow.pyfunc",
    "mlflow.lightgbm",
    "mlflow.sklearn",
    "skops.io",
)


@app.command("serve")
def serve_cmd(
    host: Annotated[str | None, typer.Option(help="Bind address (default serving.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serving.port).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    replicas: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Replicas (serving.replicas): processes behind the port, or Ray Serve "
            "replicas with --ray.",
        ),
    ] = None,
    preload: Annotated[
        bool,
        typer.Option(
            "--preload/--no-preload",
            help="With replicas: import the app's libraries once here and fork each replica "
            "from this process (a replica that dies is back in seconds); --no-preload starts "
            "each afresh (uvicorn's workers).",
        ),
    ] = True,
    on_ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Serve on Ray Serve (serving.backend: ray): the replicas across the Ray "
            "cluster at ray.address (a local Ray if unset).",
        ),
    ] = False,
) -> None:
    """Serve the champion of each configured model on /predict, with keys, limits and audit.

    Each replica is one process with one model thread, its own model copies,
    key cache, spool segment and audit writer (appends serialise on the
    database, so the chain stays one). With more than one, this process is
    their supervisor: it holds the listening socket, the replicas accept
    from it, a replica that dies is started again at once, and SIGTERM or
    Ctrl-C stops them all; rate limits are then shared by every replica of
    this home. The supervisor imports the app's libraries once and forks the
    replicas from itself (see :mod:`aipaas.ops.replicas`); ``--no-preload``
    leaves that to uvicorn's own workers, each started afresh. With
    ``serving.tls_certfile`` and ``serving.tls_keyfile`` it serves HTTPS
    only (checked first: both or neither, files that load).

    With ``--ray`` (or ``serving.backend: ray``) the same app runs as a Ray
    Serve deployment of N replicas, placed, routed and restarted by Ray, one
    CPU each, behind Serve's proxy on every node with a replica; this
    process deploys it, waits for SIGTERM or Ctrl-C and takes it down (see
    ``serving/rayserve.py`` for what the replicas share).
    """
    import uvicorn

    from aipaas.ops.up import check_browser_settings, serving_tls

    s = settings()
    check_browser_settings(s)
    tls = serving_tls(s)
    workers = replicas or s.serving.replicas
    if on_ray or _backend(s) == "ray":
        _serve_on_ray(s, host or s.serving.host, port or s.serving.port, workers, tls)
        return
    # The replicas are spawned and read their settings afresh: the count
    # decides their limiter, so they must see the one given here.
    os.environ["AIPAAS_SERVING__REPLICAS"] = str(workers)
    if workers > 1:
        _metrics_shared_by_replicas(s)
    options: dict[str, Any] = {
        "factory": True,
        "host": host or s.serving.host,
        "port": port or s.serving.port,
        "log_level": log_level,
        "access_log": False,  # the audit trail is the access log
        "ssl_certfile": str(tls[0]) if tls else None,
        "ssl_keyfile": str(tls[1]) if tls else None,
    }
    if workers > 1 and preload:
        raise typer.Exit(_forked_replicas(uvicorn.Config(APP, **options), workers))
    uvicorn.run(APP, workers=workers, **options)


def _forked_replicas(config: Any, count: int) -> int:
    """``count`` uvicorn servers on one socket, forked from this process once it imported them.

    Nothing of the app is built here: each replica loads it (``config.load``
    in ``Server.run``), so its database, files, threads and model are its own.
    """
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from aipaas.ops import replicas
    from aipaas.settings import get_settings

    log = logging.getLogger("uvicorn.error")
    get_settings.cache_clear()  # the replicas read AIPAAS_SERVING__REPLICAS, set above
    sock = config.bind_socket()
    took = replicas.preload(PRELOAD)
    log.info("imported the app's libraries in %.1f s; forking %d replicas", took, count)

    def replica(slot: int) -> None:
        uvicorn.Server(config).run(sockets=[sock])

    try:
        return replicas.supervise(count, replica, startup_failure=STARTUP_FAILURE, log=log)
    finally:
        sock.close()


def _metrics_shared_by_replicas(s: Settings) -> None:
    """One ``/metrics`` for every replica: prometheus-client's multiprocess mode.

    Each replica writes its values to files in one folder (emptied here, at
    the start of this serve: counts begin at zero as they would in one
    process) and a scrape of any replica sums every replica's files, a
    restarted replica's old ones too, so totals never go back.
    """
    folder = s.run_dir / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _backend(s: Settings) -> str:
    """``serving.backend``: ``uvicorn`` (processes on this host) or ``ray`` (Ray Serve)."""
    return s.serving.backend


def _serve_on_ray(
    s: Settings, host: str, port: int, replicas: int, tls: tuple[Path, Path] | None
) -> None:
    from serving.rayserve import RayServing, serve_until_stopped

    def ready(served: RayServing) -> None:
        typer.echo(
            f"aipaas: serving on Ray Serve at {served.url}: {served.replicas} replica(s), "
            f"Ray at {served.ray_address or 'local'}",
        )
        if served.hosts > 1:
            typer.echo(
                f"aipaas: the cluster spans {served.hosts} hosts; rate limits are shared per "
                f"host, so a key may get up to {served.hosts} times its rate",
            )

    serve_until_stopped(
        s, host=host, port=port, replicas=replicas, tls=tls, on_ready=ready, progress=typer.echo
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
