"""``aipaas train``: search, evaluate and register a challenger, in this process."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from aipaas.cli._app import app, settings
from aipaas.training import tags

SHOWN_METRICS = (tags.HOLDOUT_PREFIX, tags.LATENCY_PREFIX, tags.CV_PREFIX)
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
    from aipaas.modeldef import load_definition
    from aipaas.training.train import train

    s = settings()
    updates = {}
    if samples is not None:
        updates["num_samples"] = samples
    if concurrency is not None:
        updates["max_concurrent"] = concurrency
    if updates:
        s = s.model_copy(update={"tune": s.tune.model_copy(update=updates)})
    result = train(load_definition(model, s.models_dir), s)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
        return
    typer.echo(f"registered {result.model_uri} (alias {tags.CHALLENGER}), run {result.run_id}")
    typer.echo(f"data: {result.dataset}@{result.data_hash}")
    typer.echo(f"trials: {result.trials_ok} ok, {result.trials_failed} failed")
    for key, value in sorted(result.metrics.items()):
        if key.startswith(SHOWN_METRICS):
            typer.echo(f"  {key:24} {value:.4f}")
    typer.echo(f"best params: {json.dumps(result.best_params, default=str)}")
