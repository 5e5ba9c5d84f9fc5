"""``aipaas train, aipaas mlflow, aipaas models lineage``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from aipaas.cli._app import app, models_app, settings

ModelArg = Annotated[str, typer.Argument(help="Model name: a definition in models/<name>.py.")]


@app.command("train")
def train_cmd(
    model: ModelArg,
    samples: Annotated[
        int | None,
        typer.Option("--samples", "-n", help="Trials to run (default: tune.num_samples)."),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", help="Trials at once (default: tune.max_concurrent)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Search, refit, evaluate and register MODEL on its dataset's recorded version.

    The new version gets alias `challenger`; `aipaas promote MODEL` decides
    whether it becomes champion.
    """
    from aipaas.training.train import train

    s = settings()
    updates = {}
    if samples is not None:
        updates["num_samples"] = samples
    if concurrency is not None:
        updates["max_concurrent"] = concurrency
    if updates:
        s = s.model_copy(update={"tune": s.tune.model_copy(update=updates)})
    result = train(model, s)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
        return
    typer.echo(f"registered {result.model_uri} (alias challenger), run {result.run_id}")
    typer.echo(f"data: {result.dataset}@{result.data_hash}")
    typer.echo(f"trials: {result.trials_ok} ok, {result.trials_failed} failed")
    for key, value in sorted(result.metrics.items()):
        if key.startswith(("holdout_", "latency_", "cv_")):
            typer.echo(f"  {key:24} {value:.4f}")
    typer.echo(f"best params: {json.dumps(result.best_params, default=str)}")


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


@models_app.command("lineage")
def lineage_cmd(
    model: ModelArg,
    version: Annotated[str, typer.Argument(help="Registered version number.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the data a registered version was trained on: dataset, DVC hash, suite, run, commit."""
    from aipaas.training.train import lineage

    info = lineage(model, version, settings())
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    for key, value in info.items():
        typer.echo(f"{key:{width}}  {value}")
