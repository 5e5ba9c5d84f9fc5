"""``aipaas predict-batch``: the champion scores a dataset version or a file, on Ray.

Runs in this process (no Prefect needed; the ``batch`` flow runs the same
steps). Who asked is the OS user (``alice (cli)``) unless ``--as`` names
someone; it goes on the job's MLflow run and its audit record.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from aipaas.cli._app import app, settings

ModelArg = Annotated[str, typer.Argument(help="Model name, as registered (e.g. diagnosis).")]


@app.command("predict-batch")
def predict_batch_cmd(
    model: ModelArg,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "-d",
            help="Score a dataset version: NAME (the recorded one) or NAME@VERSION (its hash).",
        ),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="Score a CSV or Parquet file instead."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the predictions (.csv or .parquet); "
            "default: a new CSV under <home>/batch/.",
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option("--version", "-v", help="A promoted version to use instead of the champion."),
    ] = None,
    who: Annotated[
        str | None,
        typer.Option("--as", help="Who the job is for, on its audit record (default: you)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Ray tasks at a time (default: Ray's CPUs)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Score every row with the champion on Ray; write predictions keyed by row; record lineage."""
    from aipaas.inference import batch
    from aipaas.training.promote import default_decider

    t0 = time.perf_counter()
    result = batch.predict_batch(
        settings(),
        model,
        who=who or default_decider(),
        dataset=dataset,
        input_file=input_file,
        output=output,
        version=version,
        workers=workers,
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    keys = "row content hash" if result.key_column == batch.HASH_KEY else "column"
    typer.secho(
        f"scored {result.rows:,} rows of {result.input} with {result.model} "
        f"v{result.model_version}",
        fg=typer.colors.GREEN,
    )
    typer.echo(
        f"  on Ray      {_count(result.shards, 'shard')}, "
        f"{_count(result.workers, 'worker process', 'worker processes')}, "
        f"{result.seconds:.2f} s ({result.rows_per_s:,.0f} rows/s); "
        f"{time.perf_counter() - t0:.1f} s in all"
    )
    typer.echo(f"  output      {result.output}")
    typer.echo(f"  sha256      {result.output_sha256}")
    typer.echo(f"  row keys    {keys} {result.key_column!r}")
    typer.echo(f"  lineage     MLflow run {result.mlflow_run_id} in {result.experiment}")
    typer.echo(f"  audit       record {result.audit_seq}, for {result.who}")


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"
