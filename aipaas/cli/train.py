"""``aipaas train``: search, evaluate and register a challenger, in this process.

Training takes from seconds to minutes, so the command shows where it is:
on a terminal, each stage with its elapsed time and, during the search, a bar
of trials done of total with the best score so far; when the output is not a
terminal (a log, CI, a pipe), one plain line per stage and per finished
trial. The core only reports events (:mod:`aipaas.progress`); the rendering
lives here, and ``aipaas data run`` uses it too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Annotated, Any

import typer

from aipaas.cli._app import app, settings
from aipaas.cli.models import store_card
from aipaas.progress import Progress, StageEvent, TrialEvent, format_stage, format_trial
from aipaas.training import tags

SHOWN_METRICS = (tags.HOLDOUT_PREFIX, tags.LATENCY_PREFIX, tags.CV_PREFIX)
ModelArg = Annotated[str, typer.Argument(help="Model name: a definition in models/<name>.py.")]


class LineProgress:
    """One plain line per stage event and per finished trial: for logs and pipes.

    The stream is bound when the display starts: the search sends stray
    library output to stderr while it runs, and progress must not follow it.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def on_stage(self, event: StageEvent) -> None:
        typer.echo(format_stage(event), file=self.stream)

    def on_trial(self, event: TrialEvent) -> None:
        typer.echo(format_trial(event), file=self.stream)


class TerminalProgress:
    """A live display (rich): a row per stage with its time, a bar for the search's trials.

    Finished trials are also printed above the display, one line each, so the
    scroll-back keeps them.
    """

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(file=stream)
        self.bar = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[best]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.rows: dict[str, Any] = {}

    def on_stage(self, event: StageEvent) -> None:
        label = f"{event.stage} ({event.detail})" if event.detail else event.stage
        if event.status == "started":
            self.rows[event.stage] = self.bar.add_task(label, total=None, best="")
            return
        row = self.rows.get(event.stage)
        if row is None:
            return
        total = self.bar.tasks[row].total or 1
        colour = "green" if event.status == "finished" else "red"
        self.bar.update(
            row,
            total=total,
            completed=total if event.status == "finished" else self.bar.tasks[row].completed,
            description=f"[{colour}]{label} {event.status} in {event.elapsed_s:.1f} s[/]",
        )
        self.bar.stop_task(row)

    def on_trial(self, event: TrialEvent) -> None:
        self.console.print(format_trial(event), highlight=False, markup=False)
        row = self.rows.get("search")
        if row is None:
            return
        best = f"best {event.metric} {event.best:.4f}" if event.best is not None else ""
        self.bar.update(row, total=event.total, completed=event.done, best=best)


@contextmanager
def progress_display(to_stderr: bool = False) -> Iterator[Progress]:
    """A live display when the output is a terminal, plain lines otherwise.

    ``to_stderr`` keeps stdout for a machine-read result (``--json``).
    """
    stream = sys.stderr if to_stderr else sys.stdout
    if not stream.isatty():
        yield LineProgress(stream)
        return
    display = TerminalProgress(stream)
    with display.bar:
        yield display


@app.command("train")
def train_cmd(
    model: ModelArg,
    samples: Annotated[
        int | None,
        typer.Option("--samples", "-n", help="Trials to run (default: tune.num_samples)."),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            help="Trials at once (default: tune.max_concurrent; 0: one per CPU Ray sees).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Search, refit, evaluate and register MODEL on its dataset's recorded version.

    The new version gets alias `challenger`; `aipaas promote MODEL` decides
    whether it becomes champion. Progress goes to stdout (stderr with --json).
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
    definition = load_definition(model, s.models_dir)
    with progress_display(to_stderr=as_json) as progress:
        result = train(definition, s, progress)
    store_card(s, definition, result.version)
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
