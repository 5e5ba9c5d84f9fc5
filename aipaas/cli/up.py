"""``aipaas up``: the whole platform on this machine, stopped by Ctrl-C."""

from __future__ import annotations

from typing import Annotated

import typer

from aipaas.cli._app import app, settings
from aipaas.modeldef import list_definitions
from aipaas.ops import up
from aipaas.settings import Settings
from aipaas.training import registry, tags


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
    """Start Prefect, MLflow, the deployments runner, the API and the profiler; Ctrl-C stops all.

    Ports come from settings (AIPAAS_PREFECT__PORT, AIPAAS_MLFLOW__PORT,
    AIPAAS_SERVING__PORT); state and logs live under AIPAAS_HOME.
    """
    s = settings()
    services = up.plan(
        s,
        serving_argv=up.cli_argv("serve") if _has_command("serve") else None,
        profiler_argv=up.cli_argv("profiler") if _has_command("profiler") else None,
    )

    def on_ready(sup: up.Supervisor) -> None:
        typer.echo(f"deployments: {_deployments_note(s)}")
        if lifecycle:
            _start_missing_lifecycles(s)

    code = up.run(s, services, on_ready=on_ready, echo=typer.echo)
    raise typer.Exit(code)


def _has_command(name: str) -> bool:
    """Whether an area registered ``aipaas <name>`` (serving and profiler are optional)."""
    for command in app.registered_commands:
        callback_name = command.callback.__name__ if command.callback else ""
        if (command.name or callback_name.replace("_", "-")) == name:
            return True
    return False


def _deployments_note(s: Settings) -> str:
    from flows.deployments import deployments

    parts = []
    for d in deployments(s):
        crons = _crons(d)
        parts.append(d.name + (f" (cron {', '.join(crons)})" if crons else ""))
    return ", ".join(parts) or "none"


def _crons(deployment: object) -> list[str]:
    schedules = getattr(deployment, "schedules", None) or []
    return [str(getattr(s.schedule, "cron", s.schedule)) for s in schedules]


def _start_missing_lifecycles(s: Settings) -> None:
    """Start a lifecycle run, through the Prefect API, for each served model with no champion."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    registry.connect(s)
    defined = set(list_definitions(s.models_dir))
    for model in s.serving.models:
        if model not in defined:
            typer.echo(f"  {model}: no definition in {s.models_dir}; skipped")
            continue
        champion = registry.get_alias(model, tags.CHAMPION)
        if champion is not None:
            typer.echo(f"  {model}: champion is v{champion.version}")
            continue
        with temporary_settings(updates={PREFECT_API_URL: s.prefect_api_url}):
            flow_run = run_deployment(
                "lifecycle/lifecycle",
                parameters={"model": model},
                timeout=0,
                as_subflow=False,
                tags=["aipaas", "up"],
            )
        assert isinstance(flow_run, FlowRun)  # run_deployment is sync outside async code
        ui = s.prefect_api_url.removesuffix("/api")
        typer.echo(
            f"  {model}: no champion yet; started the lifecycle "
            f"({ui}/runs/flow-run/{flow_run.id}); serving loads the model once it is promoted"
        )
