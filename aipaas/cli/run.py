"""``aipaas run <flow>``: a Prefect flow now, in this process.

The run reports to the Prefect server ``aipaas up`` started when one answers
(so it shows in the UI), else to a temporary one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from aipaas.cli._app import run_app, settings
from aipaas.settings import Settings

ModelArg = Annotated[str, typer.Argument(help="Model name: a definition in models/.")]


@contextmanager
def prefect_api(s: Settings) -> Iterator[str | None]:
    """Report flow runs to the running platform's Prefect server when it answers."""
    auth = s.prefect.auth_string.get_secret_value()
    if os.environ.get("PREFECT_API_URL"):
        if auth:
            os.environ.setdefault("PREFECT_API_AUTH_STRING", auth)
        yield os.environ["PREFECT_API_URL"]
        return
    url = s.prefect_api_url
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            alive = resp.status == 200
    except (urllib.error.URLError, OSError):
        alive = False
    if not alive:
        yield None
        return
    from prefect.settings import temporary_settings

    from flows._common import prefect_settings

    with temporary_settings(updates=prefect_settings(s)):
        yield url


def _run(flow: Callable[..., Any], **params: Any) -> None:
    """Run ``flow`` here (on the platform's Prefect server if it answers); print its result."""
    with prefect_api(settings()) as url:
        typer.echo(f"running {flow.__name__} on {url or 'a temporary Prefect server'} ...")
        result = flow(**params)
    typer.echo(json.dumps(_plain(result), indent=2, default=str))


def _plain(result: Any) -> Any:
    """A flow's result as JSON-ready values (flows return dataclasses)."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return result


@run_app.command("lifecycle")
def run_lifecycle(model: ModelArg = "diagnosis") -> None:
    """Data, then train, then promote, now."""
    from flows.lifecycle import lifecycle_flow

    _run(lifecycle_flow, model=model)


@run_app.command("promote")
def run_promote(
    model: ModelArg = "diagnosis",
    version: Annotated[str | None, typer.Option("--version", "-v")] = None,
) -> None:
    """The promote flow (gates table artifact; pauses when approval is required)."""
    from flows.promote import promote_flow

    _run(promote_flow, model=model, version=version)


@run_app.command("data")
def run_data(
    dataset: Annotated[str, typer.Argument(help="Dataset name.")] = "breast_cancer",
) -> None:
    """The data flow: ingest, validate, split, version, push."""
    from flows.data import data_flow

    _run(data_flow, dataset=dataset)


@run_app.command("train")
def run_train(model: ModelArg = "diagnosis") -> None:
    """The train flow: search on warm Ray workers, holdout evaluation, register the challenger."""
    from flows.train import train_flow

    _run(train_flow, model=model)


@run_app.command("drift")
def run_drift(model: ModelArg = "diagnosis") -> None:
    """The drift flow: compare served profiles with the champion's reference."""
    from flows.drift import drift_flow

    _run(drift_flow, model=model)


@run_app.command("retrain")
def run_retrain(model: ModelArg = "diagnosis") -> None:
    """The retrain flow: new training data, then data, train, promote."""
    from flows.retrain import retrain_flow

    _run(retrain_flow, model=model)


@run_app.command("batch")
def run_batch(
    model: ModelArg = "diagnosis",
    dataset: Annotated[
        str | None, typer.Option(help="NAME or NAME@VERSION; default: the model's dataset.")
    ] = None,
    input_file: Annotated[
        str | None, typer.Option("--input", help="A CSV or Parquet file instead.")
    ] = None,
    output: Annotated[str | None, typer.Option("--output", "-o")] = None,
    version: Annotated[str | None, typer.Option(help="Promoted version; default champion")] = None,
) -> None:
    """The batch flow: the champion scores a dataset version or a file on Ray."""
    from flows.batch import batch_flow

    _run(
        batch_flow,
        model=model,
        dataset=dataset,
        input_file=input_file,
        output=output,
        version=version,
    )
