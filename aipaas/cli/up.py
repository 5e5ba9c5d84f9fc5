"""``aipaas up``: the whole platform on this machine, stopped by Ctrl-C."""

from __future__ import annotations

from typing import Annotated

import typer

from aipaas.cli._app import app, settings
from aipaas.modeldef import list_definitions
from aipaas.ops import up
from aipaas.settings import Settings
from aipaas.training import promote, registry, tags


@app.command("up")
def up_cmd(
    lifecycle: Annotated[
        bool,
        typer.Option(
            "--lifecycle/--no-lifecycle",
            help="Run the lifecycle (data -> train -> promote) for models with no champion.",
        ),
    ] = True,
) -> None:
    """Start Prefect, MLflow, a work-pool worker, the API and the profiler; Ctrl-C stops all.

    Ports come from settings (AIPAAS_PREFECT__PORT, AIPAAS_MLFLOW__PORT,
    AIPAAS_SERVING__PORT); state and logs live under AIPAAS_HOME.
    """
    s = settings()

    def on_ready(sup: up.Supervisor) -> None:
        typer.echo(f"deployments: {deployments_note(s)}")
        typer.echo(
            f"work pool: {s.prefect.work_pool!r}; another machine joins it with `aipaas worker`"
        )
        if lifecycle:
            start_missing_lifecycles(s)

    code = up.run(s, up.plan(s), on_ready=on_ready, echo=typer.echo)
    raise typer.Exit(code)


def deployments_note(s: Settings) -> str:
    """The deployments on the work pool, each with its cron if it has one."""
    from flows.deployments import deployments

    parts = []
    for d in deployments(s):
        crons = [str(getattr(sch.schedule, "cron", sch.schedule)) for sch in d.schedules or []]
        parts.append(d.name + (f" (cron {', '.join(crons)})" if crons else ""))
    return ", ".join(parts)


def start_missing_lifecycles(s: Settings) -> None:
    """Start a lifecycle run, through the Prefect API, for each served model with no champion."""
    from flows._common import TAGS, run_deployment_at

    registry.connect(s)
    defined = set(list_definitions(s.models_dir))
    ui = s.prefect_api_url.removesuffix("/api")
    # The allow-list if there is one, else every model the project defines.
    wanted = [s.serving.default_model, *(s.serving.models or sorted(defined))]
    for model in dict.fromkeys(wanted):
        if model not in defined:
            typer.echo(f"  {model}: no definition in {s.models_dir}; skipped")
            continue
        champion = registry.get_alias(model, tags.CHAMPION)
        if champion is not None:
            refusal = promote.serving_refusal(s, champion)
            note = f"; serving REFUSES it: {refusal}" if refusal else ""
            typer.echo(f"  {model}: champion is v{champion.version}{note}")
            continue
        flow_run = run_deployment_at(
            s.prefect_api_url,
            "lifecycle/lifecycle",
            {"model": model},
            tags=(*TAGS, "up"),
            auth_string=s.prefect.auth_string.get_secret_value() or None,
        )
        typer.echo(
            f"  {model}: no champion yet; started the lifecycle "
            f"({ui}/runs/flow-run/{flow_run.id}); serving loads the model once it is promoted"
        )
