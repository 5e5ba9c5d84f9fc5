"""``aipaas data ...``: ingest, validate, split, version.

``ingest``, ``validate`` and ``split`` are the DVC stages' commands (dvc.yaml
calls them, and lists this module among their deps); ``run`` reproduces all
three through DVC and pushes them; ``version`` and ``list`` read what is
recorded; ``restore`` rebuilds the exact version a model was trained on from
the DVC remote, on any checkout; ``suite`` scaffolds a starting expectation
suite from the data (:mod:`aipaas.datasets.scaffold`). A stage command runs
with its params as params.yaml holds them
(:func:`aipaas.datasets.ingest.stage_settings`): an environment override of
one is refused with exit code 2, since DVC would not see it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from aipaas.cli._app import data_app, exit_without_teardown, settings
from aipaas.datasets import ingest
from aipaas.exceptions import ConfigurationError, DataValidationError
from aipaas.schemas import DatasetVersion, ValidationReport

DatasetArg = Annotated[
    str, typer.Argument(help="Dataset name, as declared under `datasets:` in params.yaml.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@data_app.command("ingest")
def ingest_cmd(dataset: DatasetArg) -> None:
    """Write data/<dataset>/raw.csv from the source plus data/incoming/<dataset>/*.csv."""
    path = ingest.ingest(dataset, ingest.stage_settings("ingest", dataset, settings()))
    typer.echo(f"ingested {dataset}: {path}")
    exit_without_teardown()


@data_app.command("validate")
def validate_cmd(
    dataset: DatasetArg,
    path: Annotated[
        Path | None,
        typer.Option(
            "--path",
            "-p",
            help="Validate this CSV instead of data/<dataset>/raw.csv (records nothing).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a file against expectations/<dataset>.json; exit non-zero if it fails."""
    report = ingest.validate(dataset, ingest.stage_settings("validate", dataset, settings()), path)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)
    if not report.success:
        raise DataValidationError(
            f"{dataset}: {report.path} failed validation"
            + (f" ({report.error})" if report.error else f" ({len(report.failed)} expectations)"),
            report=report,
        )
    exit_without_teardown()


@data_app.command("split")
def split_cmd(dataset: DatasetArg) -> None:
    """Write train.csv and holdout.csv; refuses (non-zero exit) unless validation passed."""
    train, holdout = ingest.split(dataset, ingest.stage_settings("split", dataset, settings()))
    typer.echo(f"split {dataset}: {train}, {holdout}")
    exit_without_teardown()


@data_app.command("run")
def run_cmd(
    dataset: DatasetArg,
    push: Annotated[
        bool, typer.Option("--push/--no-push", help="Push the outputs to the DVC remote.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Reproduce ingest -> validate -> split with DVC, push, and print the version.

    Each stage is shown as it runs, with its time (stdout; stderr with --json).
    """
    from aipaas.cli.train import progress_display
    from aipaas.progress import stage

    s = settings()
    # ingest.run_data_pipeline's three steps, each a stage people see.
    with progress_display(to_stderr=as_json) as progress:
        try:
            with stage(progress, "reproduce", "ingest, validate, split"):
                ingest.reproduce(dataset, s)
        except DataValidationError as err:
            if err.report is not None:
                _print_report(err.report)
            raise
        if push:
            with stage(progress, "push", "DVC remote"):
                ingest.push_dataset(dataset, s)
        with stage(progress, "version"):
            version = ingest.recorded_version(dataset, s)
    _print_version(version, as_json)


@data_app.command("version")
def version_cmd(dataset: DatasetArg, as_json: JsonOpt = False) -> None:
    """Print the recorded version of a dataset (hash, rows, suite, paths)."""
    _print_version(ingest.recorded_version(dataset, settings()), as_json)


@data_app.command("restore")
def restore_cmd(
    dataset: DatasetArg,
    version: Annotated[
        str | None,
        typer.Option("--version", help="The dataset hash to restore (`aipaas data version`)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Restore the data this model was trained on.")
    ] = None,
    model_version: Annotated[
        str | None, typer.Option("--model-version", help="The version of --model.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Put back the files of a dataset version from the DVC remote, and check its hash."""
    from aipaas.training.train import find_recorded_data, recorded_data

    s = settings()
    if (version is None) == (model is None) or (model is None) != (model_version is None):
        raise ConfigurationError(
            "name what to restore: --version HASH, or --model NAME --model-version N"
        )
    if model is not None and model_version is not None:
        recorded = recorded_data(model, model_version, s)
        if recorded.dataset != dataset:
            raise ConfigurationError(
                f"{recorded.model_version} was trained on {recorded.dataset!r}, not {dataset!r}"
            )
        lock, data_hash = recorded.lock, recorded.data_hash
    else:
        data_hash = str(version)
        current = ingest.version_lock(dataset, s, data_hash)
        lock = current if current is not None else find_recorded_data(dataset, data_hash, s).lock
    restored = ingest.restore_version(dataset, s, lock, data_hash)
    if not as_json:
        typer.secho(f"restored {dataset} {restored.hash} from the DVC remote", fg="green")
    _print_version(restored, as_json)


@data_app.command("suite")
def suite_cmd(
    dataset: DatasetArg,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Scaffold from this CSV instead of the dataset's raw data (or its source).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here instead of expectations/<dataset>.json."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing suite (its edits are lost).")
    ] = False,
) -> None:
    """Write a starting expectation suite from the data, for you to review and edit."""
    from aipaas.datasets import scaffold

    s = settings()
    ds = ingest.spec(dataset, s)
    target = Path(output) if output is not None else ingest.paths(dataset, s).suite
    scaffold.refuse_overwrite(target, force)  # before reading any data
    frame, source = scaffold.dataset_frame(dataset, s, from_file)
    result = scaffold.scaffold_suite(frame, dataset, ds.target, ds.task, source=source)
    scaffold.write_suite(result, target, force=force)
    typer.secho(
        f"wrote {target}: {result.expectations} expectations from {result.rows} rows of {source}",
        fg=typer.colors.GREEN,
    )
    typer.echo(f"  {'column':<28} {'taken for':<10} checks")
    for c in result.columns:
        typer.echo(f"  {c.name:<28} {c.kind:<10} {c.summary}")
    for warning in result.warnings:
        typer.secho(f"  check: {warning}", fg=typer.colors.YELLOW)
    typer.echo(
        "Review it: each expectation's meta says what was seen; tighten or widen bounds "
        f"and sets, then `aipaas data run {dataset}` (or `aipaas data validate {dataset} "
        "--path FILE` to try a file)."
    )


@data_app.command("list")
def list_cmd(as_json: JsonOpt = False) -> None:
    """List the declared datasets and their recorded versions."""
    rows = ingest.list_datasets(settings())
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    typer.echo(f"{'dataset':<20} {'source':<28} {'target':<14} {'suite':<8} {'rows':>7}  hash")
    for r in rows:
        typer.echo(
            f"{r.name:<20} {r.source:<28} {r.target:<14} {r.suite:<8} "
            f"{r.rows if r.rows is not None else '-':>7}  {r.hash or '-'}"
        )


def _print_version(version: DatasetVersion, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(version.to_dict(), indent=2))
        return
    typer.echo(f"dataset   {version.name}")
    typer.echo(f"hash      {version.hash}")
    typer.echo(f"rows      {version.rows}")
    typer.echo(f"suite     {'passed' if version.suite_passed else 'FAILED'}")
    typer.echo(f"target    {version.target}")
    typer.echo(f"train     {version.train_path}")
    typer.echo(f"holdout   {version.holdout_path}")
    typer.echo(f"commit    {version.git_commit or '-'}")


def _print_report(report: ValidationReport) -> None:
    if report.success:
        typer.secho(
            f"{report.dataset}: {report.path} passed ({report.evaluated} expectations, "
            f"{report.rows} rows)",
            fg=typer.colors.GREEN,
        )
    else:
        typer.secho(f"{report.dataset}: {report.path} FAILED validation", fg=typer.colors.RED)
        if report.error:
            typer.echo(f"  {report.error}")
        if report.failed:
            typer.echo(
                f"  {len(report.failed)} failed ({report.evaluated} expectations evaluated; "
                "failures that follow from a missing or non-numeric column are folded in):"
            )
            typer.echo(f"  {'expectation':<42} {'column':<26} {'rows':>6}  examples / details")
            for f in report.failed:
                examples = ", ".join(map(str, f.examples))
                extra = "; ".join(x for x in (examples, f.details) if x)
                typer.echo(
                    f"  {f.expectation:<42} {f.column or '(table)':<26} "
                    f"{f.unexpected_count:>6}  {extra}"
                )
    if report.data_docs:
        typer.echo(f"Data Docs: {report.data_docs}")
