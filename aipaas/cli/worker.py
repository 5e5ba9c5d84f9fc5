"""``aipaas worker``: a Prefect worker on the platform's work pool (this or another machine).

The worker is Prefect's own process worker (``prefect worker start --type
process``), run with the environment every ``aipaas up`` child gets (home,
servers, credentials), so the flow runs it starts are configured like the
rest of the platform. Each run imports its flow from the installed aipaas
package (module-path entrypoints) and works in this machine's project
directory (``AIPAAS_PROJECT_DIR``, set here; see :mod:`flows.deployments`):
any machine with the project installed and the platform's settings joins
the pool, whatever directory the worker is started from.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Annotated

import typer

from aipaas.cli._app import app, settings
from aipaas.exceptions import ConfigurationError
from aipaas.ops import up
from aipaas.settings import PROJECT_ROOT

# Prefect's worker asks for new runs every 10 s by default; the runner it
# replaces looked every 1-2 s, and a drift or lifecycle run should start at once.
QUERY_SECONDS = "1"


@app.command("worker")
def worker_cmd(
    name: Annotated[
        str | None, typer.Option(help="The worker's name in the Prefect UI (default: host-pid).")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, help="Flow runs this worker executes at once.")
    ] = up.WORKER_RUN_LIMIT,
    register: Annotated[
        bool,
        typer.Option(
            "--register",
            help="First create the work pool and register the deployments (what `up` does).",
        ),
    ] = False,
) -> None:
    """Run flow runs from the platform's Prefect work pool, here, until Ctrl-C.

    Needs the platform's Prefect API (AIPAAS_PREFECT__API_URL, and
    AIPAAS_PREFECT__AUTH_STRING when it has one) and MLflow
    (AIPAAS_MLFLOW__TRACKING_URI, with the MLflow user when auth is on).
    """
    s = settings()
    api = s.prefect_api_url
    if not up.http_ok(f"{api}/health"):
        raise ConfigurationError(
            f"the Prefect API at {api} does not answer; start the platform (`aipaas up`) "
            "or point AIPAAS_PREFECT__API_URL at it"
        )
    if up.prefect_api(s, "/work_pools/filter", {"limit": 1}) is None:
        raise ConfigurationError(
            f"the Prefect API at {api} refuses this worker; set AIPAAS_PREFECT__AUTH_STRING "
            "to the platform's API auth string"
        )
    if register:
        from flows.deployments import register as register_deployments

        names = register_deployments(s)
        typer.echo(f"registered on work pool {s.prefect.work_pool!r}: {', '.join(names)}")
    env = {
        **os.environ,
        **up.child_env(s),
        # Where each flow run works: this machine's project (see flows.deployments).
        "AIPAAS_PROJECT_DIR": os.environ.get("AIPAAS_PROJECT_DIR", str(PROJECT_ROOT)),
        "PREFECT_WORKER_QUERY_SECONDS": os.environ.get(
            "PREFECT_WORKER_QUERY_SECONDS", QUERY_SECONDS
        ),
    }
    argv = [sys.executable, "-m", "prefect", "worker", "start"]
    argv += ["--pool", s.prefect.work_pool, "--type", "process", "--limit", str(limit)]
    argv += ["--name", name or f"{socket.gethostname()}-{os.getpid()}"]
    typer.echo(f"worker on work pool {s.prefect.work_pool!r} at {api} (Ctrl-C stops it)")
    sys.stdout.flush()
    # The worker replaces this process: signals (Ctrl-C, up's SIGTERM) reach it directly.
    os.execve(sys.executable, argv, env)
